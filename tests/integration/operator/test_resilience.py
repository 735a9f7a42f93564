"""Restart safety and broker faults, with the real operator process, API server and broker."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from opharness import (
    ORDERS,
    cfr,
    condition,
    configmap,
    orders_pods,
    publish_raw,
    refresh,
    wait_for,
    wait_phase,
)
from refreshbus_wire import Ack, AckResult, RefreshEvent, encode, new_id, now
from refreshbus_wire.routing import OPERATOR_ACK_QUORUM_QUEUE, ack_key

pytestmark = pytest.mark.integration

SPEC = {"sources": [{"configMap": {"name": "app-config"}}], "target": {"selector": {"matchLabels": ORDERS}}}


def make_pods(cluster: Any, ns: str, n: int, fake_sidecars: Any, behaviours: dict[int, Any]) -> list[Any]:
    configmap(cluster, ns, "app-config", {"a": "1"})
    return orders_pods(cluster, ns, n, fake_sidecars, behaviours)


def answer_on_second_delivery(event: RefreshEvent, nth: int) -> tuple[str, None] | None:
    return None if nth == 1 else ("ok", None)


def test_restarted_operator_republishes_only_to_pods_that_did_not_answer(
    cluster, namespace, start_operator, fake_sidecars
):
    fakes = make_pods(cluster, namespace, 3, fake_sidecars, {2: answer_on_second_delivery})
    op = start_operator()
    keyed = {**SPEC, "sources": [{"configMap": {"name": "app-config", "keys": ["a"]}}]}
    refresh(cluster, namespace, "r", {**keyed, "deadlineSeconds": 60})
    before = wait_for(
        lambda: (
            (o := cfr(cluster, namespace, "r")).get("status", {}).get("counts", {}).get("acked") == 2 and o
        ),
        20,
        "two acks in status",
    )
    assert before["status"]["phase"] == "InProgress"
    op.kill()  # SIGKILL mid-refresh: no clean-up, status says InProgress
    op2 = start_operator(name="restarted")
    obj = wait_phase(cluster, namespace, "r", "Succeeded", operator=op2)
    assert obj["status"]["eventId"] == before["status"]["eventId"]
    assert obj["status"]["counts"]["acked"] == 3
    # The two pods that had answered were not sent the event again; the silent one was.
    assert len(fakes[0].deliveries()) == 1
    assert len(fakes[1].deliveries()) == 1
    assert [e.id for e in fakes[2].deliveries()] == [before["status"]["eventId"]] * 2
    # The resumed round re-publishes the same sources, keys included (from the round annotation).
    assert [s.keys for e in fakes[2].deliveries() for s in e.sources] == [("a",), ("a",)]
    assert "resumed" in op2.text()


def test_acks_sent_while_the_operator_is_down_are_not_lost(
    cluster, namespace, running_broker, start_operator, fake_sidecars
):
    gate = threading.Event()
    url = running_broker.url("refreshbus-sidecar")

    def late(event: RefreshEvent, nth: int) -> None:
        def answer() -> None:
            gate.wait(60)
            ack = Ack(
                id=new_id(),
                event_id=event.id,
                namespace=namespace,
                pod="orders-5d8f9c7b6-p1",
                result=AckResult.OK,
                received_at=now(),
                identity_token=fakes[1].token,
            )
            publish_raw(url, ack_key(namespace, "orders-5d8f9c7b6-p1"), encode(ack))

        threading.Thread(target=answer, daemon=True).start()

    fakes = make_pods(cluster, namespace, 2, fake_sidecars, {1: late})
    op = start_operator()
    refresh(cluster, namespace, "r", SPEC)
    wait_for(
        lambda: cfr(cluster, namespace, "r").get("status", {}).get("counts", {}).get("acked") == 1,
        20,
        "the first ack in status",
    )
    op.kill()
    gate.set()  # the ack lands in the durable queue while no operator runs
    wait_for(
        lambda: running_broker.list_queues().get(OPERATOR_ACK_QUORUM_QUEUE, 0) >= 1,
        10,
        "the ack to wait in the queue",
    )
    op2 = start_operator(name="restarted")
    obj = wait_phase(cluster, namespace, "r", "Succeeded", operator=op2)
    assert obj["status"]["counts"]["acked"] == 2
    assert len(fakes[1].deliveries()) == 1  # folded from the queue, not re-published


def test_broker_down_at_publish_time_converges_after_it_returns(
    cluster, namespace, running_broker, start_operator, fake_sidecars
):
    fakes = make_pods(cluster, namespace, 2, fake_sidecars, {})
    op = start_operator()
    running_broker.stop()
    try:
        refresh(cluster, namespace, "r", {**SPEC, "deadlineSeconds": 120})
        obj = wait_for(
            lambda: (
                (o := cfr(cluster, namespace, "r"))
                and condition(o, "Published").get("reason") == "BrokerUnavailable"
                and o
            ),
            30,
            "Published=False BrokerUnavailable",
        )
        assert obj["status"]["phase"] == "Pending"
    finally:
        running_broker.start()
    obj = wait_phase(cluster, namespace, "r", "Succeeded", timeout=60, operator=op)
    assert condition(obj, "Published")["status"] == "True"
    assert all(len(f.deliveries()) == 1 for f in fakes)
    assert op.metrics()["refreshbus_operator_publish_retries_total"] >= 1


def test_broker_restart_mid_refresh_converges(
    cluster, namespace, running_broker, start_operator, fake_sidecars
):
    fakes = make_pods(cluster, namespace, 2, fake_sidecars, {1: answer_on_second_delivery})
    op = start_operator()
    refresh(cluster, namespace, "r", {**SPEC, "deadlineSeconds": 90})
    wait_for(
        lambda: cfr(cluster, namespace, "r").get("status", {}).get("counts", {}).get("acked") == 1,
        20,
        "the first ack",
    )
    running_broker.restart()
    # Events or acks may have been lost with the broker: once the operator is reconnected it
    # re-publishes (same event id) to the pod that has not answered, and only to it.
    obj = wait_phase(cluster, namespace, "r", "Succeeded", timeout=60, operator=op)
    assert obj["status"]["counts"]["acked"] == 2
    assert len(fakes[0].deliveries()) == 1
    assert len(fakes[1].deliveries()) == 2


def test_a_publish_superseded_while_the_broker_is_down_does_not_wedge_the_operator(
    cluster, namespace, running_broker, start_operator, fake_sidecars
):
    """Broker down, a ConfigRefresh applied, re-applied with a new generation while its publish
    is retrying, broker back: the new generation and every new ConfigRefresh afterwards reach a
    final phase (the cancelled publish once killed the publisher for good)."""
    make_pods(cluster, namespace, 2, fake_sidecars, {})
    op = start_operator()
    running_broker.stop()
    try:
        refresh(cluster, namespace, "r", {**SPEC, "deadlineSeconds": 120})
        wait_for(
            lambda: condition(cfr(cluster, namespace, "r"), "Published").get("reason") == "BrokerUnavailable",
            30,
            "generation 1 to retry its publish",
        )
        refresh(cluster, namespace, "r", {**SPEC, "deadlineSeconds": 119})
        wait_for(
            lambda: cfr(cluster, namespace, "r").get("status", {}).get("observedGeneration") == 2,
            30,
            "generation 2 to start",
        )
    finally:
        running_broker.start()
    obj = wait_phase(cluster, namespace, "r", "Succeeded", timeout=60, operator=op)
    assert obj["status"]["observedGeneration"] == 2
    for name in ("after-1", "after-2"):
        refresh(cluster, namespace, name, SPEC)
        wait_phase(cluster, namespace, name, "Succeeded", timeout=30, operator=op)


def ok_then_unchanged(event: RefreshEvent, nth: int) -> tuple[str, None]:
    """A sidecar answers ``unchanged`` when sent an event it already applied."""
    return ("ok", None) if nth == 1 else ("unchanged", None)


def unacked_acks(broker: Any) -> int:
    out = broker.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged")
    counts = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    return int(counts.get(OPERATOR_ACK_QUORUM_QUEUE, 0))


def results(obj: dict[str, Any]) -> dict[str, str]:
    return {r["pod"]: r["result"] for r in obj["status"].get("results") or ()}


def test_acks_folded_but_not_written_when_the_operator_stops_are_redelivered(
    cluster, namespace, running_broker, start_operator, fake_sidecars
):
    """SIGTERM between folding acks and writing them to status: the restarted operator gets
    them again from the broker and shows ``ok``, instead of re-publishing and showing the
    ``unchanged`` the pods answer the second time."""
    gate = threading.Event()

    def gated(event: RefreshEvent, nth: int) -> tuple[str, None]:
        gate.wait(60)
        return ok_then_unchanged(event, nth)

    # p2 keeps the round open (it answers only when the restarted operator re-publishes).
    behaviours = {0: gated, 1: gated, 2: answer_on_second_delivery}
    fakes = make_pods(cluster, namespace, 3, fake_sidecars, behaviours)
    # A long flush interval keeps the acks folded in memory, unwritten, once InProgress is.
    op = start_operator("--standalone", "--status-flush-interval", "60")
    refresh(cluster, namespace, "r", {**SPEC, "deadlineSeconds": 90})
    wait_for(lambda: cfr(cluster, namespace, "r").get("status", {}).get("phase") == "InProgress", 30,
             "the round to publish")
    gate.set()
    wait_for(lambda: unacked_acks(running_broker) == 2, 30, "both acks delivered to the operator, unacked")
    assert cfr(cluster, namespace, "r")["status"]["counts"]["acked"] == 0
    assert op.stop() == 0  # SIGTERM
    op2 = start_operator(name="restarted")
    obj = wait_phase(cluster, namespace, "r", "Succeeded", operator=op2)
    assert results(obj) == {f.pod: "ok" for f in fakes}
    assert [len(f.deliveries()) for f in fakes] == [1, 1, 2]  # p0, p1 folded from the queue


def refuse_status_writes(cluster: Any, namespace: str, name: str) -> None:
    """A ValidatingAdmissionPolicy that refuses every status write of ConfigRefresh ``name``."""
    policy = f"refuse-status-{namespace}"
    manifests = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["refreshbus.io"], "apiVersions": ["*"], "operations": ["UPDATE"],
                    "resources": ["configrefreshes/status"]}]},
                "matchConditions": [{"name": "this-one", "expression": f"object.metadata.name == '{name}'"}],
                "validations": [{"expression": "false", "message": "status writes refused by the test"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            },
        },
    ]
    items = {"apiVersion": "v1", "kind": "List", "items": manifests}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(items))

    def refused() -> bool:
        probe = cluster.kubectl("-n", namespace, "patch", "configrefresh", name, "--subresource=status",
                                "--type=merge", "-p", '{"status":{"message":"probe"}}', "--dry-run=server",
                                check=False)
        return probe.returncode != 0 and "refused by the test" in probe.stderr

    wait_for(refused, 30, "the policy to refuse status writes", interval=0.2)


def allow_status_writes(cluster: Any, namespace: str) -> None:
    policy = f"refuse-status-{namespace}"
    cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", policy,
                    "--ignore-not-found")


def test_an_ack_whose_status_write_fails_is_not_released_and_is_redelivered(
    cluster, namespace, running_broker, start_operator, fake_sidecars
):
    """Status writes refused (longer than the old give-up budget) after a pod answered: the
    delivery stays unacked at the broker; the operator stopped meanwhile, its successor gets
    the ack redelivered and shows ``ok`` (no re-publish)."""
    gate = threading.Event()

    def gated(event: RefreshEvent, nth: int) -> tuple[str, None]:
        gate.wait(60)
        return ok_then_unchanged(event, nth)

    fakes = make_pods(cluster, namespace, 1, fake_sidecars, {0: gated})
    op = start_operator()
    refresh(cluster, namespace, "r", {**SPEC, "deadlineSeconds": 120})
    wait_for(lambda: cfr(cluster, namespace, "r").get("status", {}).get("phase") == "InProgress", 30,
             "the round to publish")
    try:
        refuse_status_writes(cluster, namespace, "r")
        gate.set()
        # The old code gave up after 6 attempts (~13 s) and released the ack anyway.
        wait_for(lambda: op.text().count("final status write failed") >= 7, 40,
                 "the final status write to be retried beyond the old budget")
        assert unacked_acks(running_broker) == 1
        assert cfr(cluster, namespace, "r")["status"]["phase"] == "InProgress"
        assert op.stop() == 0  # SIGTERM while the write is still refused
    finally:
        allow_status_writes(cluster, namespace)
    op2 = start_operator(name="restarted")
    obj = wait_phase(cluster, namespace, "r", "Succeeded", operator=op2)
    assert results(obj) == {fakes[0].pod: "ok"}
    assert len(fakes[0].deliveries()) == 1
