"""HA with kopf peering: two operator replicas, only the higher priority one acts; when it
dies, the other takes over (and resumes what was in flight)."""

from __future__ import annotations

import json
import re

import pytest
from opharness import ORDERS, cfr, configmap, deployment, refresh, wait_for, wait_phase
from refreshbus_support.pods import Owner, create_pod

pytestmark = pytest.mark.integration

SPEC = {"sources": [{"configMap": {"name": "app-config"}}], "target": {"selector": {"matchLabels": ORDERS}}}


def handled(op, name: str) -> bool:
    return re.search(rf"<Round [^ ]+/{name} gen=\d+ event=[^>]+> (started|resumed)", op.text()) is not None


def test_only_the_active_replica_acts_and_the_standby_takes_over(
    cluster, namespace, start_operator, fake_sidecars
):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    for i in range(2):
        pod = create_pod(cluster, namespace, f"orders-5d8f9c7b6-p{i}", labels=ORDERS,
                         owner=Owner.replicaset_of("orders"), configmaps=("app-config",))
        fake_sidecars(namespace, pod.name, ("Deployment", "orders"))
    # a pod that answers only when it is sent the event a second time (by the new leader)
    late = create_pod(cluster, namespace, "late-0", labels={"app": "late"}, configmaps=("app-config",))
    late_fake = fake_sidecars(namespace, late.name, ("Pod", "late-0"),
                              lambda _e, nth: None if nth == 1 else ("ok", None))
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
        "metadata": {"name": "refreshbus", "namespace": namespace}}))
    env = {"REFRESHBUS_OPERATOR_PEERING_LIFETIME": "4"}
    active = start_operator("--peering", "refreshbus", "--priority", "200", name="active", env=env)
    standby = start_operator("--peering", "refreshbus", "--priority", "100", name="standby", env=env)

    def peers() -> int:
        return len(cluster.get_json("-n", namespace, "kopfpeering", "refreshbus").get("status") or {})

    wait_for(lambda: peers() == 2, 30, "both replicas in the peering object")

    refresh(cluster, namespace, "first", SPEC)
    wait_phase(cluster, namespace, "first", "Succeeded", operator=active)
    assert handled(active, "first")
    assert not handled(standby, "first")

    refresh(cluster, namespace, "inflight", {**SPEC, "target": {"pods": ["late-0"]}, "deadlineSeconds": 90})
    wait_for(lambda: late_fake.deliveries(), 20, "the in-flight event to reach late-0")
    assert cfr(cluster, namespace, "inflight")["status"]["phase"] == "InProgress"

    active.kill()  # no goodbye: its keep-alive simply expires
    refresh(cluster, namespace, "second", SPEC)
    obj = wait_phase(cluster, namespace, "second", "Succeeded", timeout=60, operator=standby)
    assert handled(standby, "second")
    assert obj["status"]["counts"]["succeeded"] == 2
    assert cfr(cluster, namespace, "first")["status"]["phase"] == "Succeeded"  # not redone
    assert not handled(standby, "first")
    # ... and it resumed the round the dead leader had left in flight
    obj = wait_phase(cluster, namespace, "inflight", "Succeeded", timeout=60, operator=standby)
    assert len(late_fake.deliveries()) == 2


def test_replicas_without_priority_derive_distinct_ones_from_their_pod_names(
    cluster, namespace, start_operator
):
    """Two replicas of one ReplicaSet, no --priority, only the Downward API pod name (as the
    chart runs them): distinct priorities from their names, pod names as kopf identities, and
    exactly one acts (no same-priority freeze)."""
    from refreshbus_operator.settings import priority_for

    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
        "metadata": {"name": "refreshbus", "namespace": namespace}}))
    names = ["refreshbus-operator-7c9d8f6b5-x2k4q", "refreshbus-operator-7c9d8f6b5-x2k4r"]
    ops = [
        start_operator("--peering", "refreshbus", name=f"replica{i}",
                       env={"REFRESHBUS_OPERATOR_POD_NAME": pod, "REFRESHBUS_OPERATOR_PEERING_LIFETIME": "4"})
        for i, pod in enumerate(names)
    ]

    def status() -> dict:
        return cluster.get_json("-n", namespace, "kopfpeering", "refreshbus").get("status") or {}

    wait_for(lambda: len(status()) == 2, 30, "both replicas in the peering object")
    assert {ident: info["priority"] for ident, info in status().items()} == {
        pod: priority_for(pod) for pod in names
    }
    leader = max(range(2), key=lambda i: priority_for(names[i]))
    standby = ops[1 - leader]
    wait_for(lambda: "Pausing operations in favour of" in standby.text(), 20, "the lower one to pause")
    assert "Possibly conflicting operators with the same priority" not in ops[0].text() + ops[1].text()


AUTO = {
    "refreshbus.io/inject": "true",
    "refreshbus.io/auto-refresh": "true",
    "refreshbus.io/configmaps": "app-config",
}


def test_a_paused_replica_stops_its_rounds_and_auto_refresh_and_resumes_when_active(
    cluster, namespace, start_operator, fake_sidecars
):
    """A rolling update: a higher-priority replica joins while the old one is active. The old
    one pauses: its in-flight round stops unfinished (the new one resumes it), its
    auto-refresh stops (one ConfigMap edit -> exactly one ConfigRefresh, run by the new one).
    When the new one leaves, the old one resumes the round the new one left in flight."""
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    deployment(cluster, namespace, "orders", ORDERS, AUTO)
    for i in range(2):
        pod = create_pod(cluster, namespace, f"orders-5d8f9c7b6-p{i}", labels=ORDERS,
                         owner=Owner.replicaset_of("orders"), configmaps=("app-config",))
        fake_sidecars(namespace, pod.name, ("Deployment", "orders"))
    lates = []
    for i in range(2):  # pods that answer only when sent the event a second time
        late = create_pod(cluster, namespace, f"late-{i}", labels={"app": "late"}, configmaps=("app-config",))
        lates.append(fake_sidecars(namespace, late.name, ("Pod", late.name),
                                   lambda _e, nth: None if nth == 1 else ("ok", None)))
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
        "metadata": {"name": "refreshbus", "namespace": namespace}}))
    env = {"REFRESHBUS_OPERATOR_PEERING_LIFETIME": "4", "REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0.5",
           "REFRESHBUS_OPERATOR_RENUDGE_INITIAL": "120", "REFRESHBUS_OPERATOR_RENUDGE_MAX": "120"}
    old = start_operator("--peering", "refreshbus", "--priority", "100", name="old", env=env)
    wait_for(lambda: old.metrics().get("refreshbus_operator_watched_sources") == 1, 30,
             "the old replica's ConfigMap watch")
    refresh(cluster, namespace, "inflight", {**SPEC, "target": {"pods": ["late-0"]}, "deadlineSeconds": 120})
    wait_for(lambda: lates[0].deliveries(), 20, "the in-flight event to reach late-0")

    new = start_operator("--peering", "refreshbus", "--priority", "200", name="new", env=env)
    wait_for(lambda: "paused by peering" in old.text(), 30, "the old replica to pause")
    wait_phase(cluster, namespace, "inflight", "Succeeded", timeout=60, operator=new)
    assert handled(new, "inflight")
    assert len(lates[0].deliveries()) == 2  # once by the old replica, once by the new one
    assert not re.search(r"/inflight gen=\d+ event=[^>]+> finished", old.text())  # stopped, unfinished

    cluster.kubectl("-n", namespace, "patch", "configmap", "app-config", "--type=merge", "-p",
                    json.dumps({"data": {"k": "v1"}}))
    items = wait_for(
        lambda: [i for i in cluster.get_json("-n", namespace, "configrefreshes", "-l",
                                             "refreshbus.io/auto-refresh-for=orders")["items"]
                 if i.get("status", {}).get("phase") == "Succeeded"],
        30, "the auto-created refresh to succeed")
    auto = cluster.get_json("-n", namespace, "configrefreshes", "-l",
                            "refreshbus.io/auto-refresh-for=orders")["items"]
    assert [i["metadata"]["name"] for i in auto] == [items[0]["metadata"]["name"]]
    assert handled(new, items[0]["metadata"]["name"])
    assert not handled(old, items[0]["metadata"]["name"])
    assert old.metrics().get("refreshbus_operator_auto_refreshes_total", 0) == 0

    # The new replica leaves with a round in flight: the old one, active again, resumes it.
    refresh(cluster, namespace, "left", {**SPEC, "target": {"pods": ["late-1"]}, "deadlineSeconds": 120})
    wait_for(lambda: lates[1].deliveries(), 20, "the second in-flight event to reach late-1")
    assert new.stop() == 0
    wait_for(lambda: "active by peering" in old.text().split("paused by peering", 1)[1], 30,
             "the old replica to become active again")
    wait_phase(cluster, namespace, "left", "Succeeded", timeout=60, operator=old)
    assert len(lates[1].deliveries()) == 2
