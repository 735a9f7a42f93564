"""The broker users the chart creates, on a real RabbitMQ: the definitions file the chart
renders (users, permissions, topic permissions, exchange, ack queue) is imported into a node of
its own (Debian's rabbitmq-server, as in the rest of the suite), then the real sidecar `Bus`
and the operator's real topology code connect with the chart's credentials. What the protocol
needs works; everything else is refused by the broker.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from refreshbus_testenv.broker import Broker

pytestmark = pytest.mark.integration

PASSWORDS = {"operator": "op-Secret-1", "sidecar": "sc-Secret-2"}


@pytest.fixture(scope="module")
def definitions(render: Any) -> dict[str, Any]:
    manifests = render(
        "default",
        "--set", f"rabbitmq.users.operator.password={PASSWORDS['operator']}",
        "--set", f"rabbitmq.users.sidecar.password={PASSWORDS['sidecar']}",
    )  # fmt: skip
    (secret,) = [
        m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("-definitions")
    ]
    loaded: dict[str, Any] = json.loads(base64.b64decode(secret["data"]["definitions.json"]))
    return loaded


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, definitions: dict[str, Any]) -> Iterator[Broker]:
    """A RabbitMQ node of this module's own (the session broker's users are not touched)."""
    broker = Broker(tmp_path_factory.mktemp("rabbitmq-chart"))
    try:
        broker.start()
        path = broker.workdir / "definitions.json"
        path.write_text(json.dumps(definitions))
        broker.ctl("import_definitions", str(path))
        yield broker
    finally:
        broker.destroy()


def url(node: Broker, user: str) -> str:
    return node.url(f"refreshbus-{user}", PASSWORDS[user])


def refused(action: Callable[[pika.adapters.blocking_connection.BlockingChannel], object], node: Broker,
            user: str) -> str:  # fmt: skip
    """Run ``action`` on a fresh channel; return the broker's ACCESS_REFUSED text (fails if allowed)."""
    conn = pika.BlockingConnection(pika.URLParameters(url(node, user)))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            action(channel)
        assert err.value.reply_code == 403, err.value
        return str(err.value.reply_text)
    finally:
        if conn.is_open:
            conn.close()


def test_definitions_load_with_the_users_and_topology(node: Broker) -> None:
    users = node.ctl("list_users", "-q", "--no-table-headers")
    assert "refreshbus-operator" in users
    assert "refreshbus-sidecar" in users
    assert "refreshbus.operator.acks" in node.list_queues()
    topic = node.ctl("list_topic_permissions", "-q", "--no-table-headers")
    assert "refreshbus-sidecar\trefreshbus\t^ack\\.\t^refresh\\." in topic


def test_operator_and_sidecar_do_their_job_with_the_chart_credentials(node: Broker) -> None:
    from refreshbus_operator.publishing import connect, declare_topology
    from refreshbus_sidecar.bus import Bus
    from refreshbus_wire import events, routing

    # Operator: its real topology declaration (exchange, ack queue, ack.# binding).
    op = connect([url(node, "operator")])
    channel = op.channel()
    declare_topology(channel)
    channel.confirm_delivery()
    # Sidecar: the real Bus (declares the exchange, its queue, its four bindings; consumes).
    pod = f"web-{uuid.uuid4().hex[:6]}"
    identity = routing.PodIdentity("shop", pod, "Deployment", "web")
    bus = Bus([url(node, "sidecar")], identity)
    bus.connect()
    try:
        channel.basic_publish(routing.EXCHANGE, routing.pod_key("shop", pod), b"nudge")
        for _ in range(20):
            bus.wait(0.25)
            if bus.pending:
                break
        assert [d.body for d in bus.pending] == [b"nudge"]
        bus.settle(bus.pending.popleft().tag)
        ack = events.Ack(
            id=events.new_id(), event_id=events.new_id(), namespace="shop", pod=pod,
            result=events.AckResult.OK, received_at=events.now(),
        )  # fmt: skip
        bus.publish_ack(ack)
        method, _, body = channel.basic_get(routing.OPERATOR_ACK_QUEUE, auto_ack=True)
        assert method is not None
        received = events.decode(body)
        assert isinstance(received, events.Ack)
        assert (received.id, received.pod, received.result) == (ack.id, pod, events.AckResult.OK)
    finally:
        bus.close()
        op.close()


def test_a_sidecar_cannot_publish_refresh_events(node: Broker) -> None:
    text = refused(lambda ch: ch.basic_publish("refreshbus", "refresh.all", b"x"), node, "sidecar")
    assert "refresh.all" in text


def test_a_sidecar_cannot_listen_to_acks(node: Broker) -> None:
    queue = f"refreshbus.sidecar.shop.{uuid.uuid4().hex[:6]}"

    def bind_acks(ch: Any) -> None:
        ch.queue_declare(queue, durable=True, arguments={"x-expires": 60000})
        ch.queue_bind(queue, "refreshbus", routing_key="ack.#")

    assert "ack.#" in refused(bind_acks, node, "sidecar")
    refused(lambda ch: ch.basic_consume("refreshbus.operator.acks", lambda *a: None), node, "sidecar")


def test_a_sidecar_cannot_create_other_queues_or_exchanges(node: Broker) -> None:
    refused(lambda ch: ch.queue_declare("my-queue"), node, "sidecar")
    refused(lambda ch: ch.exchange_declare("other", exchange_type="fanout"), node, "sidecar")
    refused(lambda ch: ch.basic_publish("amq.topic", "refresh.all", b"x"), node, "sidecar")


def test_the_operator_cannot_forge_acks_or_touch_sidecar_queues(node: Broker) -> None:
    assert "ack." in refused(
        lambda ch: ch.basic_publish("refreshbus", "ack.shop.web-1", b"x"), node, "operator"
    )
    refused(lambda ch: ch.queue_declare("refreshbus.sidecar.shop.web-1"), node, "operator")
