#!/usr/bin/env bash
# Build the test node's cluster add-ons from their Go modules, pinned, cached per version:
# CoreDNS (cluster DNS, the version kubeadm deploys with Kubernetes 1.34) and rancher's
# local-path-provisioner (the dynamic PVC provisioner kind ships). Nothing can be pulled
# as an image here, so tests/testenv/refreshbus_testenv/addons.py packs these binaries
# into images (hack/build-images.py) and deploys them the way kind does.
#
# Usage: hack/build-cluster-addons.sh [coredns] [local-path-provisioner]   (default: both)
#   prints one line per add-on: <name> <path of the binary>
#   env: COREDNS_VERSION, LOCAL_PATH_PROVISIONER_VERSION, REFRESHBUS_CACHE
set -euo pipefail

COREDNS_VERSION="${COREDNS_VERSION:-v1.12.1}"
LOCAL_PATH_PROVISIONER_VERSION="${LOCAL_PATH_PROVISIONER_VERSION:-v0.0.30}"
CACHE="${REFRESHBUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refreshbus}"
addons=("$@")
[ ${#addons[@]} -gt 0 ] || addons=(coredns local-path-provisioner)

declare -A module=(
  [coredns]="github.com/coredns/coredns@$COREDNS_VERSION"
  [local-path-provisioner]="github.com/rancher/local-path-provisioner@$LOCAL_PATH_PROVISIONER_VERSION"
)
declare -A version=(
  [coredns]="$COREDNS_VERSION"
  [local-path-provisioner]="$LOCAL_PATH_PROVISIONER_VERSION"
)

mkdir -p "$CACHE"
for a in "${addons[@]}"; do
  [ -n "${module[$a]:-}" ] || { echo "unknown add-on: $a (known: ${!module[*]})" >&2; exit 2; }
  dir="$CACHE/$a-${version[$a]}"
  bin="$dir/$a"
  if [ ! -x "$bin" ]; then
    # One build per cache at a time: concurrent runs wait for the first instead of
    # compiling the same module side by side on a shared machine.
    mkdir -p "$dir"
    exec 9>"$dir.lock"
    flock 9
    if [ ! -x "$bin" ]; then
      command -v go >/dev/null || { echo "go is required to build $a (install Go >= 1.23)" >&2; exit 1; }
      echo "building $a ${version[$a]} from ${module[$a]} (first run on this machine only; cached in $dir)" >&2
      start=$(date +%s)
      # Neither module has replace directives, so `go install module@version` builds exactly
      # the released go.mod/go.sum.
      GOBIN="$dir/.gobin" CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags="-s -w" "${module[$a]}" >&2
      mv "$dir/.gobin/$(basename "${module[$a]%@*}")" "$bin"
      rmdir "$dir/.gobin"
      echo "built $a in $(( $(date +%s) - start ))s" >&2
    fi
    exec 9>&-
  fi
  echo "$a $bin"
done
