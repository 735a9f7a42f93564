#!/usr/bin/env bash
# Build stakater/Reloader (the peer of the vs-peers benchmark) from third_party/reloader, cached.
#
# Reloader's own module is not served by the Go module proxy here, so its pinned source is in
# the repository (third_party/reloader/README.md says what differs from the tag); its
# dependencies come from the proxy, pinned by its go.sum. The binary is cached per version and
# per content of that source, so `make test` builds it once per machine.
#
# Usage: hack/build-reloader.sh            prints the path of the binary on its last line
#   env: REFRESHBUS_CACHE (default ~/.cache/refreshbus)
set -euo pipefail

RELOADER_VERSION=v1.4.21
RELOADER_COMMIT=392be733e05b8e52c94199263abfd0f7632faab1
SRC="$(cd "$(dirname "$0")/.." && pwd)/third_party/reloader"
CACHE="${REFRESHBUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refreshbus}"
key=$(cd "$SRC" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
BIN="$CACHE/reloader-$RELOADER_VERSION/$key"
# One build at a time per cache (see build-k8s-binaries.sh).
mkdir -p "$CACHE"
exec 9>"$CACHE/reloader-$RELOADER_VERSION.lock"
flock 9

if [ -x "$BIN/reloader" ]; then
  echo "reloader $RELOADER_VERSION cached in $BIN" >&2
  echo "$BIN/reloader"
  exit 0
fi
command -v go >/dev/null || { echo "go is required to build Reloader $RELOADER_VERSION (install Go >= 1.26)" >&2; exit 1; }

echo "building Reloader $RELOADER_VERSION (first run on this machine only; cached in $BIN)" >&2
start=$(date +%s)
mkdir -p "$BIN"
pkg=github.com/stakater/Reloader/pkg/common
(cd "$SRC" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
  -ldflags="-s -w -X $pkg.Version=$RELOADER_VERSION -X $pkg.Commit=$RELOADER_COMMIT" \
  -o "$BIN/reloader.tmp" . >&2)
mv "$BIN/reloader.tmp" "$BIN/reloader"
echo "built Reloader in $(( $(date +%s) - start ))s" >&2
echo "$BIN/reloader"
