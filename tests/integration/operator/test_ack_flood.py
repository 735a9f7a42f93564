"""A flood of acks for unknown events (a buggy or hostile sidecar, or a fuzzer) must not
hold up the real acks queued behind it: parked acks are capped well below the prefetch
window. Found by ``make fuzz``; real operator process, real broker."""

from __future__ import annotations

import pika
import pytest
from opharness import ORDERS, configmap, orders_pods, refresh, wait_for, wait_phase
from refreshbus_wire import Ack, AckResult, encode, new_id, now, routing

pytestmark = pytest.mark.integration


def test_a_flood_of_acks_for_unknown_events_does_not_hold_up_a_real_refresh(
    cluster, namespace, start_operator, fake_sidecars, running_broker
):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    orders_pods(cluster, namespace, 1, fake_sidecars)
    # Before the cap, each prefetch window (1000) of parked acks waited out the whole grace
    # (60 s here) before the next window came in: 3 windows ahead of the real ack.
    # "warn": the flood's acks (no identity token) are routed and parked, as from a sidecar
    # older than protocol 1.2; with "require" they would be refused at once, never parked.
    op = start_operator(env={"REFRESHBUS_OPERATOR_UNKNOWN_ACK_GRACE": "60",
                             "REFRESHBUS_OPERATOR_ACK_IDENTITY": "warn"})
    conn = pika.BlockingConnection(pika.URLParameters(running_broker.url()))
    try:
        channel = conn.channel()
        for _ in range(3000):
            ack = Ack(id=new_id(), event_id=new_id(), namespace=namespace, pod="rogue", result=AckResult.OK,
                      received_at=now())
            channel.basic_publish(routing.EXCHANGE, routing.ack_key(namespace, "rogue"), encode(ack))
    finally:
        conn.close()
    # The flood is ahead of the real ack in the queue (publishes without confirms may still
    # be on their way into it when the connection has closed).
    wait_for(lambda: running_broker.list_queues().get(routing.OPERATOR_ACK_QUORUM_QUEUE, 0) >= 3000, 30,
             "the flood to be queued")

    refresh(cluster, namespace, "r", {"sources": [{"configMap": {"name": "app-config"}}],
                                      "target": {"selector": {"matchLabels": ORDERS}}, "deadlineSeconds": 30})

    obj = wait_phase(cluster, namespace, "r", ("Succeeded", "TimedOut"), timeout=60, operator=op)
    assert obj["status"]["phase"] == "Succeeded"
    # all but the capped few dropped without waiting for the grace, and counted
    wait_for(lambda: op.metrics().get('refreshbus_operator_acks_total{outcome="unknown_event"}', 0) >= 2900,
             30, "the flood to be counted as unknown_event")
    # The capped few go back to the shared queue when the idle consumer closes its channel
    # (never acked: they may be a resumed round's): leave the queue clean for later tests.
    wait_for(lambda: op.metrics().get('refreshbus_operator_broker_connected{role="consumer"}') == 0, 30,
             "the consumer to go idle")
    running_broker.ctl("purge_queue", routing.OPERATOR_ACK_QUORUM_QUEUE)
