"""The headline comparison, short (issue 10 §4; the full, timed one is ``make bench-vs-peers``).

One ConfigMap edit, consumed by two Deployments of the same app: one under stakater/Reloader
(built from third_party/reloader, deployed as its upstream manifest does), one under
refreshbus. Reloader replaces every pod; refreshbus reloads the same containers in place,
and no request to its Service fails meanwhile. Behaviour only: no timing is asserted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from refreshbus_support.vspeers import (
    Cluster,
    LoadGenerator,
    configmaps,
    replaced_containers,
    wait_served,
    workload,
)
from refreshbus_testenv.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

RELOADER_MANIFEST = Path(__file__).parent / "manifests" / "reloader.yaml"
REPLICAS = 3


@pytest.fixture(scope="module")
def reloader(cluster: ControlPlane, release: str) -> Iterator[str]:
    """stakater/Reloader, watching every namespace (its default install)."""
    cluster.kubectl("apply", "-f", str(RELOADER_MANIFEST))
    yield "reloader"
    cluster.kubectl("delete", "-f", str(RELOADER_MANIFEST), "--wait=false", check=False)


def test_one_edit_reloader_replaces_every_pod_refreshbus_reloads_in_place_without_failed_requests(
    cluster: ControlPlane, reloader: str, namespace: str
) -> None:
    ns = namespace
    objects = [
        *configmaps("shared-content", "v1"),
        *workload("with-reloader", "reloader", REPLICAS, "shared-content"),
        *workload("with-refreshbus", "refreshbus", REPLICAS, "shared-content"),
    ]
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=manifest)
    rollouts = ((reloader, "reloader-reloader"), (ns, "with-reloader"), (ns, "with-refreshbus"))
    for deploy_ns, deploy in rollouts:
        cluster.kubectl(
            "-n", deploy_ns, "rollout", "status", f"deployment/{deploy}", "--timeout=120s", timeout=130
        )
    api = Cluster(cluster.kubeconfig)
    before = {app: api.live_pods(ns, app) for app in ("with-reloader", "with-refreshbus")}
    assert all(len(pods) == REPLICAS for pods in before.values()), before

    with (
        LoadGenerator(api.service_url(ns, "with-refreshbus")) as in_place,
        LoadGenerator(api.service_url(ns, "with-reloader")) as rolling,
    ):
        api.set_content(ns, "shared-content", "v2")
        refreshed = wait_served(api, ns, "with-refreshbus", REPLICAS, "v2", timeout=60)
        old = frozenset(p.uid for p in before["with-reloader"].values())
        restarted = wait_served(api, ns, "with-reloader", REPLICAS, "v2", timeout=180, replaced=old)
        sent, failed = in_place.counts()
        rolling_sent, rolling_failed = rolling.counts()

    # refreshbus: the same pods, the same containers (a restart would change their IDs).
    assert {p.uid for p in refreshed.values()} == {p.uid for p in before["with-refreshbus"].values()}
    assert replaced_containers(before["with-refreshbus"], refreshed) == 0
    for pod in cluster.get_json("-n", ns, "pods", "-l", "app=with-refreshbus")["items"]:
        statuses = pod["status"]["containerStatuses"] + pod["status"].get("initContainerStatuses", [])
        assert {s["name"]: s["restartCount"] for s in statuses} == {"nginx": 0, "refreshbus-sidecar": 0}
    assert sent > 0
    assert failed == 0, f"{failed} of {sent} requests to the refreshbus Service failed: {in_place.failures}"

    # Reloader: every pod replaced, through its env-vars strategy on the pod template.
    assert not {p.uid for p in restarted.values()} & {p.uid for p in before["with-reloader"].values()}
    assert replaced_containers(before["with-reloader"], restarted) == REPLICAS
    template = cluster.get_json("-n", ns, "deployment", "with-reloader")["spec"]["template"]
    env = {e["name"] for c in template["spec"]["containers"] for e in c.get("env", [])}
    assert any(name.startswith("STAKATER_") for name in env), env
    print(f"\n[vs-peers] failed: refreshbus {failed}/{sent}, Reloader {rolling_failed}/{rolling_sent}")
