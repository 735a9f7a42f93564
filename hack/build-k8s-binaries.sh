#!/usr/bin/env bash
# Build Kubernetes control-plane binaries from the Go module proxy, cached per version.
#
# There is no Docker and no prebuilt-binary download on the machines this project is
# developed on, so envtest-style binaries are compiled from k8s.io/kubernetes itself.
# k8s.io/kubernetes' go.mod points its staging modules (k8s.io/api, ...) at ./staging,
# which does not exist in the module zip; a throw-away module therefore requires
# k8s.io/kubernetes and replaces every staging module with its published v0.X.Y twin.
#
# Usage: hack/build-k8s-binaries.sh [component ...]
#   components: kube-apiserver kubectl etcd kube-controller-manager kube-scheduler kubelet kube-proxy
#   env: K8S_VERSION (default v1.34.4), REFRESHBUS_CACHE (default ~/.cache/refreshbus)
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
CACHE="${REFRESHBUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refreshbus}"
BIN="$CACHE/k8s-$K8S_VERSION/bin"
components=("$@")
# One build at a time per cache: parallel runs (several checkouts, or tests that build on
# demand) wait for the first one instead of compiling the same binaries again side by side.
mkdir -p "$CACHE"
exec 9>"$CACHE/k8s-$K8S_VERSION.lock"
flock 9
[ ${#components[@]} -gt 0 ] || components=(kube-apiserver kubectl etcd)

declare -A pkg=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [etcd]=go.etcd.io/etcd/server/v3
)

missing=()
for c in "${components[@]}"; do
  [ -n "${pkg[$c]:-}" ] || { echo "unknown component: $c (known: ${!pkg[*]})" >&2; exit 2; }
  [ -x "$BIN/$c" ] || missing+=("$c")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "k8s $K8S_VERSION binaries cached in $BIN"
  exit 0
fi
command -v go >/dev/null || { echo "go is required to build ${missing[*]} (install Go >= 1.24)" >&2; exit 1; }

work="$CACHE/k8s-$K8S_VERSION/module"
mkdir -p "$work" "$BIN"
minor="v0.${K8S_VERSION#v1.}"
if [ ! -f "$work/go.sum" ]; then
  echo "preparing build module for k8s.io/kubernetes $K8S_VERSION (staging modules at $minor)"
  # k8s.io/kubernetes' own go.mod lists the staging modules; fetch it through the Go toolchain.
  modfile=$(cd "$work" && printf 'module tmp\n' > go.mod && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
            | python3 -c 'import json,sys; print(open(json.load(sys.stdin)["GoMod"]).read())')
  {
    echo "module refreshbus.local/k8sbuild"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging' <<<"$modfile" | awk -v m="$minor" '{print "replace " $1 " => " $1 " " m}'
  } > "$work/go.mod"
  cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  (cd "$work" && go mod tidy -e >/dev/null 2>&1 || true; cd "$work" && GOFLAGS=-mod=mod go mod download)
fi

for c in "${missing[@]}"; do
  echo "building $c $K8S_VERSION (first run on this machine only; cached in $BIN)"
  start=$(date +%s)
  (cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" -o "$BIN/$c.tmp" "${pkg[$c]}")
  mv "$BIN/$c.tmp" "$BIN/$c"
  echo "built $c in $(( $(date +%s) - start ))s"
done
