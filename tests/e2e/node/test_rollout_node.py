"""Progressive rollout in real pods (issue 13 §3, on the real node).

A Deployment of the Node.js demo app opts in to auto-refresh with ``refreshbus.io/rollout:
"1,100%"``: a ConfigMap edit reaches one pod first, bakes, then the rest. The app's
readiness follows its config, so a config with ``"healthy": false`` breaks the readiness
probe of the pod that loads it -- a failure the sidecar's ack cannot see (the reload itself
succeeds) and only the rollout's bake gate (the pod's Ready condition, read from the real
kubelet's status) catches. What is checked is what users look at: what each pod serves
(HTTP to the pod IPs), restart counts and container IDs, and ``kubectl get cfr``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from refreshbus_support.nodekit import PodView, json_config, pods, served_version, set_config, wait_for
from refreshbus_testenv.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

MANIFEST = Path(__file__).parent / "manifests" / "rollout.yaml"
FINAL = {"Succeeded", "PartiallyFailed", "Failed", "TimedOut", "RolledBack"}


@pytest.fixture
def shop(cluster: ControlPlane, release: str, namespace: str) -> str:
    """The rollout workload, every replica ready, its release record written (the content
    the pods run now is kept before any edit)."""
    cluster.kubectl("-n", namespace, "apply", "-f", str(MANIFEST))
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/shop", "--timeout=180s", timeout=200)
    wait_for(
        lambda: (
            cluster.kubectl(
                "-n", namespace, "get", "configmap", "refreshbus-release-deployment-shop", check=False
            ).returncode
            == 0
        ),
        30,
        "the release record of deployment/shop",
    )
    return namespace


def _edit_and_watch(
    cluster: ControlPlane, ns: str, before: list[PodView], config: str, timeout: float = 120
) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """Edit the ConfigMap, then poll what every pod serves until the auto-created rollout
    ends. Returns its status and, per pod, every version it was seen serving."""
    existing = {i["metadata"]["name"] for i in cluster.get_json("-n", ns, "configrefresh")["items"]}
    set_config(cluster, ns, "shop-config", "config.json", config)
    seen: dict[str, set[str]] = {p.name: set() for p in before}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in before:
            with contextlib.suppress(OSError):
                seen[pod.name].add(served_version(pod.ip))
        parents = [
            i
            for i in cluster.get_json("-n", ns, "configrefresh")["items"]
            if i["metadata"]["name"] not in existing and "rollout" in i["spec"]
        ]
        if parents and (parents[0].get("status") or {}).get("phase") in FINAL:
            return parents[0], seen
        time.sleep(0.2)
    raise AssertionError(f"no auto-created rollout finished within {timeout:.0f}s")


def test_a_config_that_breaks_readiness_is_rolled_back_from_its_canary_without_a_restart(
    cluster: ControlPlane, shop: str
) -> None:
    before = pods(cluster, shop, "app=shop")
    assert len(before) == 3

    rollout, seen = _edit_and_watch(
        cluster, shop, before, '{"app": "shop", "version": "2", "healthy": false}'
    )

    status = rollout["status"]
    assert status["phase"] == "RolledBack", status
    canaries = {p for p, versions in seen.items() if "2" in versions}
    assert len(canaries) == 1, f"the bad config reached more than the first step's pod: {seen}"
    failing = status["rollout"]["failingPods"]
    assert [f["pod"] for f in failing] == sorted(canaries), failing
    assert "Ready" in failing[0]["reason"], failing

    # Every pod, the canary included, serves the old content again; nothing was restarted.
    wait_for(lambda: all(served_version(p.ip) == "1" for p in before), 30, "every pod to serve version 1")
    after = {p.name: p for p in pods(cluster, shop, "app=shop")}
    assert set(after) == {p.name for p in before}, "pods were replaced"
    for pod in before:
        assert after[pod.name].restarts == pod.restarts, f"{pod.name} restarted"
        assert after[pod.name].container_ids == pod.container_ids, f"{pod.name}: containers changed"
    wait_for(
        lambda: cluster.get_json("-n", shop, "deployment", "shop")["status"].get("readyReplicas") == 3,
        30,
        "all 3 replicas ready again",
    )

    # The rolled-back version is what a pod recreated by its ReplicaSet starts with, although
    # the ConfigMap still holds the bad content.
    cluster.kubectl("-n", shop, "delete", "pod", sorted(canaries)[0], "--wait=false")
    cluster.kubectl("-n", shop, "rollout", "status", "deployment/shop", "--timeout=120s", timeout=130)

    def recreated_serves_v1() -> bool:
        current = pods(cluster, shop, "app=shop")
        return len(current) == 3 and all(served_version(p.ip) == "1" for p in current)

    wait_for(recreated_serves_v1, 60, "the recreated pod to start on the accepted version 1")

    # A new edit after the rollback starts a new rollout, which passes both steps.
    current = pods(cluster, shop, "app=shop")
    rollout, seen = _edit_and_watch(cluster, shop, current, json_config("shop", "3"))
    assert rollout["status"]["phase"] == "Succeeded", rollout["status"]
    wait_for(lambda: all(served_version(p.ip) == "3" for p in current), 30, "every pod to serve version 3")
    assert all(p.restarts == 0 for p in pods(cluster, shop, "app=shop"))
