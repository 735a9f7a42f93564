"""The short version of ``make bench-e2e``: ten real sidecar processes, each with a real
Node.js app that journals every load, the real operator with auto-refresh, a real API server
and RabbitMQ. Every ConfigMap edit must be loaded by every app exactly once (no timing
assertion: the figures are the benchmark's)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opharness import wait_for
from refreshbus_support import configs
from refreshbus_support.fleet import apply_deployment, wait_loaded
from refreshbus_support.pods import Owner

pytestmark = pytest.mark.e2e

PODS = 10
EDITS = 3


def config(version: int) -> dict[str, str]:
    return {"config.json": json.dumps({"version": version, "greeting": f"hello v{version}"})}


def test_every_app_reloads_every_auto_refresh_edit_exactly_once(cluster, namespace, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config(0))
    labels = apply_deployment(cluster, namespace, "web", replicas=PODS)
    members = fleet.node_pods([f"web-5d8f9c7b6-{i:03d}" for i in range(PODS)], labels=labels,
                              owner=Owner.replicaset_of("web"), journal=True)
    # The operator with its shipped auto-refresh window (the fleet's sidecars fetch with a short jitter).
    op = start_operator()
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 30, "the ConfigMap watch")

    for version in range(1, EDITS + 1):
        configs.put_configmap(cluster, namespace, "app-config", config(version))
        wait_loaded(members, lambda e, v=version: e["version"] == v, timeout=60)

    def all_succeeded() -> list[dict[str, Any]] | None:
        items = cluster.get_json("-n", namespace, "cfr", "-l", "refreshbus.io/auto-refresh-for=web")["items"]
        done = [i for i in items if i.get("status", {}).get("phase") == "Succeeded"]
        return done if len(done) == EDITS else None

    refreshes = wait_for(all_succeeded, 60, f"{EDITS} auto-created ConfigRefreshes to succeed")
    assert all(r["status"]["counts"]["succeeded"] == PODS for r in refreshes)
    for m in members:
        loads = [(e["why"], e["version"], e["torn"]) for e in m.loads()]
        assert loads == [("start", 0, None)] + [("SIGHUP", v, None) for v in range(1, EDITS + 1)], m.name
        assert m.node_state()["config"]["version"] == EDITS
