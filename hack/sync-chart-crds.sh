#!/usr/bin/env bash
# Copy the project's CRDs (crds/, the source of truth) into the Helm chart, byte for byte.
#
#   crds/configrefreshes.refreshbus.io.yaml -> charts/refreshbus/files/crds/
#       rendered by templates/crds.yaml, so `helm upgrade` upgrades it (labels and the
#       helm.sh/resource-policy: keep annotation are added at render time);
#   crds/kopf-peering.yaml                  -> charts/refreshbus/crds/
#       Helm's install-once folder: the peering objects the chart renders need these kinds
#       to exist before Helm maps the templates, and kopf's peering schema never changes.
#
# Usage: hack/sync-chart-crds.sh           copy
#        hack/sync-chart-crds.sh --check   exit 1 and show the difference if out of sync
# tests/unit/chart/test_crds_sync.py fails on drift.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
chart="$root/charts/refreshbus"
declare -A dest=(
  [configrefreshes.refreshbus.io.yaml]="$chart/files/crds"
  [kopf-peering.yaml]="$chart/crds"
)
status=0
for f in "${!dest[@]}"; do
  src="$root/crds/$f"
  dst="${dest[$f]}/$f"
  if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$src" "$dst"; then
      echo "out of sync: $dst (run hack/sync-chart-crds.sh)" >&2
      diff -u "$dst" "$src" >&2 || true
      status=1
    fi
  else
    mkdir -p "${dest[$f]}"
    cp "$src" "$dst"
    echo "synced $dst"
  fi
done
# Every CRD in crds/ must have a home in the chart.
for src in "$root"/crds/*.yaml; do
  [ -n "${dest[$(basename "$src")]:-}" ] || { echo "crds/$(basename "$src") has no place in the chart: add it to $0" >&2; status=1; }
done
exit $status
