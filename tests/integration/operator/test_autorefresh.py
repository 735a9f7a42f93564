"""Auto-refresh: a real content change of a watched ConfigMap creates one ConfigRefresh
for the workload (debounced); metadata-only updates create none; finished ones are
garbage-collected. Real operator, API server and broker; fake sidecars."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opharness import configmap, deployment, wait_for
from refreshbus_support.pods import Owner, create_pod

pytestmark = pytest.mark.integration

ORDERS = {"app": "orders"}
AUTO = {
    "refreshbus.io/inject": "true",
    "refreshbus.io/auto-refresh": "true",
    "refreshbus.io/configmaps": "app-config",
}


def auto_refreshes(cluster: Any, ns: str) -> list[dict[str, Any]]:
    items = cluster.get_json("-n", ns, "configrefreshes", "-l", "refreshbus.io/auto-refresh-for=orders")[
        "items"
    ]
    return list(items)


def setup(cluster: Any, ns: str, fake_sidecars: Any, n: int = 2) -> list[Any]:
    configmap(cluster, ns, "app-config", {"k": "v0"})
    deployment(cluster, ns, "orders", ORDERS, AUTO)
    fakes = []
    for i in range(n):
        pod = create_pod(
            cluster,
            ns,
            f"orders-5d8f9c7b6-p{i}",
            labels=ORDERS,
            owner=Owner.replicaset_of("orders"),
            configmaps=("app-config",),
        )
        fakes.append(fake_sidecars(ns, pod.name, ("Deployment", "orders")))
    return fakes


def edit(cluster: Any, ns: str, patch: dict[str, Any]) -> None:
    cluster.kubectl("-n", ns, "patch", "configmap", "app-config", "--type=merge", "-p", json.dumps(patch))


def test_configmap_edit_creates_one_refresh_for_the_workload(
    cluster, namespace, start_operator, fake_sidecars
):
    fakes = setup(cluster, namespace, fake_sidecars)
    op = start_operator(env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "1"})
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "the ConfigMap watch")

    edit(cluster, namespace, {"metadata": {"labels": {"touched": "yes"}}})  # metadata only: nothing to do
    wait_for(
        lambda: op.metrics().get('refreshbus_operator_source_updates_total{update="metadata"}') == 1,
        20,
        "the metadata-only update to be seen",
    )
    assert auto_refreshes(cluster, namespace) == []

    for i in range(1, 4):  # a burst of real edits: one refresh
        edit(cluster, namespace, {"data": {"k": f"v{i}"}})
    items = wait_for(
        lambda: [
            i for i in auto_refreshes(cluster, namespace) if i.get("status", {}).get("phase") == "Succeeded"
        ],
        30,
        "an auto-created refresh",
    )
    obj = items[0]
    assert obj["metadata"]["name"].startswith("orders-auto-")
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert obj["metadata"]["ownerReferences"][0]["name"] == "orders"
    assert obj["spec"]["target"] == {"workload": {"kind": "Deployment", "name": "orders"}}
    assert obj["spec"]["sources"] == [{"configMap": {"name": "app-config"}}]
    assert obj["status"]["counts"]["succeeded"] == 2
    assert len(auto_refreshes(cluster, namespace)) == 1
    assert all(len(f.deliveries()) == 1 for f in fakes)
    assert op.metrics()["refreshbus_operator_auto_refreshes_total"] == 1


def test_finished_auto_refreshes_are_garbage_collected(cluster, namespace, start_operator, fake_sidecars):
    setup(cluster, namespace, fake_sidecars, n=1)
    op = start_operator(
        env={
            "REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0.2",
            "REFRESHBUS_OPERATOR_TTL_SECONDS_AFTER_FINISHED": "2",
            "REFRESHBUS_OPERATOR_GC_INTERVAL": "0.5",
        }
    )
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "the ConfigMap watch")
    edit(cluster, namespace, {"data": {"k": "v1"}})
    wait_for(
        lambda: any(
            i.get("status", {}).get("phase") == "Succeeded" for i in auto_refreshes(cluster, namespace)
        ),
        30,
        "the auto-created refresh to succeed",
    )
    wait_for(lambda: auto_refreshes(cluster, namespace) == [], 20, "its garbage collection after the TTL")


def test_workload_without_the_annotation_is_not_watched(cluster, namespace, start_operator):
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    deployment(cluster, namespace, "plain", {"app": "plain"}, {"refreshbus.io/configmaps": "app-config"})
    op = start_operator()
    deployment(cluster, namespace, "orders", ORDERS, AUTO)
    wait_for(
        lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "one watch (orders only)"
    )
    cluster.kubectl("-n", namespace, "delete", "deployment", "orders")
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 0, 20, "the watch to stop")
