#!/usr/bin/env bash
# Build the Spring Boot bus member the Spring tests run (tests/support/spring-app), cached.
#
# Boot 3.5.7 + Spring Cloud 2025.0.0 from Maven Central, with the JDK 17 and Maven that Debian
# ships (make system-deps installs them). The jar is cached per hash of the app's sources, and
# Maven's local repository lives in the same cache, so a rebuild after a source change is offline
# in practice (about 15 s) and an unchanged app is never rebuilt.
#
# Usage: hack/build-spring-app.sh      prints the jar's path on its last line
#   env: REFRESHBUS_CACHE (default ~/.cache/refreshbus)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
src="$here/tests/support/spring-app"
CACHE="${REFRESHBUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refreshbus}"
digest=$(cd "$src" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
out="$CACHE/spring-app-$digest"
jar="$out/refreshbus-spring-app.jar"
mkdir -p "$CACHE"
# One build at a time per cache: parallel test runs wait for the first one.
exec 9>"$CACHE/spring-app.lock"
flock 9
if [ -s "$jar" ]; then
  echo "$jar"
  exit 0
fi
command -v mvn >/dev/null || { echo "mvn is required to build the Spring test app (Debian: maven)" >&2; exit 1; }
command -v javac >/dev/null || { echo "a JDK 17 is required to build the Spring test app (Debian: openjdk-17-jdk-headless)" >&2; exit 1; }
work="$out/build"
rm -rf "$work" && mkdir -p "$work"
cp -r "$src/pom.xml" "$src/src" "$work/"
echo "building the Spring test app ($digest) with Maven" >&2
mvn -B -q -Dmaven.repo.local="$CACHE/m2" -f "$work/pom.xml" -DskipTests package >&2
mv "$work/target/refreshbus-spring-app.jar" "$jar"
rm -rf "$work"
echo "$jar"
