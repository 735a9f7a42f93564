#!/usr/bin/env bash
# Build the helm CLI from the Go module proxy, pinned and cached per version.
#
# Same approach as hack/build-k8s-binaries.sh: no prebuilt-binary downloads are possible on
# the machines this project is developed on, but the Go module proxy is. A throw-away module
# in the cache directory requires helm.sh/helm/v3 at the pinned version (helm's own go.mod
# has no replace directives, so its requirements resolve as published) and `go build`s
# ./cmd/helm with the ldflags helm's Makefile sets: the version string, and the default
# Kubernetes version that `helm template`/`helm lint` assume (derived, as upstream does, from
# the k8s.io/client-go version helm is built against).
#
# Usage: hack/build-helm.sh            prints the path of the binary on its last line
#   env: HELM_VERSION (default v3.21.4), REFRESHBUS_CACHE (default ~/.cache/refreshbus)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.21.4}"
CACHE="${REFRESHBUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refreshbus}"
BIN="$CACHE/helm-$HELM_VERSION/bin"
# One build at a time per cache (see build-k8s-binaries.sh).
mkdir -p "$CACHE"
exec 9>"$CACHE/helm-$HELM_VERSION.lock"
flock 9

if [ -x "$BIN/helm" ]; then
  echo "helm $HELM_VERSION cached in $BIN" >&2
  echo "$BIN/helm"
  exit 0
fi
command -v go >/dev/null || { echo "go is required to build helm $HELM_VERSION (install Go >= 1.26)" >&2; exit 1; }

work="$CACHE/helm-$HELM_VERSION/module"
mkdir -p "$work" "$BIN"
if [ ! -f "$work/go.sum" ]; then
  echo "preparing build module for helm.sh/helm/v3 $HELM_VERSION" >&2
  cat > "$work/go.mod" <<EOF
module refreshbus.local/helmbuild

go 1.26

require helm.sh/helm/v3 $HELM_VERSION
EOF
  cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO
  # Resolve helm's full dependency graph (its go.mod pins every module) and record go.sum.
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >&2)
fi

client_go=$(cd "$work" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' k8s.io/client-go)  # e.g. v0.36.2
k8s_minor=$(cut -d. -f2 <<<"$client_go")
pkgs=(helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil)
ldflags="-w -s -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in "${pkgs[@]}"; do
  ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
done

echo "building helm $HELM_VERSION (first run on this machine only; cached in $BIN)" >&2
start=$(date +%s)
(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags="$ldflags" -o "$BIN/helm.tmp" helm.sh/helm/v3/cmd/helm)
mv "$BIN/helm.tmp" "$BIN/helm"
echo "built helm $HELM_VERSION in $(( $(date +%s) - start ))s" >&2
echo "$BIN/helm"
