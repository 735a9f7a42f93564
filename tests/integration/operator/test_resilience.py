"""Restart safety and broker faults, with the real operator process, API server and broker."""

from __future__ import annotations

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
from refreshbus_wire.routing import ack_key

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
        lambda: running_broker.list_queues().get("refreshbus.operator.acks", 0) >= 1,
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
