"""The broker users the chart creates, on a real RabbitMQ: the definitions file the chart
renders (users, permissions, topic permissions, exchange, ack queue) is imported into a node of
its own (Debian's rabbitmq-server, as in the rest of the suite), then the real sidecar `Bus`
and the operator's real topology code connect with the chart's credentials. What the protocol
needs works; everything else is refused by the broker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from refreshbus_testenv.broker import RABBITMQ_BIN, Broker

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
    assert "refreshbus.operator.acks.quorum" in node.list_queues()
    topic = node.ctl("list_topic_permissions", "-q", "--no-table-headers")
    assert "refreshbus-sidecar\trefreshbus\t^ack\\.\t^refresh\\." in topic


def test_operator_and_sidecar_do_their_job_with_the_chart_credentials(node: Broker, tmp_path: Any) -> None:
    from refreshbus_operator.broker import connect, declare_topology
    from refreshbus_operator.publishing import Publisher
    from refreshbus_sidecar.bus import Bus
    from refreshbus_wire import events, routing

    async def operator_publishes(key: str) -> None:
        # The real publisher: connects, declares its topology (exchange, ack queue, ack.#
        # binding), publishes with confirms.
        publisher = Publisher([url(node, "operator")])
        await publisher.start()
        try:
            await publisher.publish([(key, b"nudge")], timeout=20)
        finally:
            await publisher.stop()

    async def operator_gets_an_ack() -> bytes | None:
        conn = await connect([url(node, "operator")])
        try:
            _exchange, queue = await declare_topology(await conn.channel())
            message = await queue.get(no_ack=True, fail=False)
            return None if message is None else message.body
        finally:
            await conn.close()

    # Sidecar: the real Bus (declares the exchange, its queue, its four bindings; consumes).
    pod = f"web-{uuid.uuid4().hex[:6]}"
    identity = routing.PodIdentity("shop", pod, "Deployment", "web")
    token_file = tmp_path / "token"
    token_file.write_text("aaa.bbb.first\n")
    bus = Bus([url(node, "sidecar")], identity, token_file=token_file)
    bus.connect()
    try:
        asyncio.run(operator_publishes(routing.pod_key("shop", pod)))
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
        body = asyncio.run(operator_gets_an_ack())
        assert body is not None
        received = events.decode(body)
        assert isinstance(received, events.Ack)
        assert (received.id, received.pod, received.result) == (ack.id, pod, events.AckResult.OK)
        assert received.identity_token == "aaa.bbb.first"
        # The kubelet rotates the token: every ack carries the file's current content.
        token_file.write_text("aaa.bbb.second")
        bus.publish_ack(ack)
        body = asyncio.run(operator_gets_an_ack())
        assert body is not None
        rotated = events.decode(body)
        assert isinstance(rotated, events.Ack)
        assert rotated.identity_token == "aaa.bbb.second"
    finally:
        bus.close()


def test_a_sidecar_cannot_publish_refresh_events(node: Broker) -> None:
    text = refused(lambda ch: ch.basic_publish("refreshbus", "refresh.all", b"x"), node, "sidecar")
    assert "refresh.all" in text


def test_a_sidecar_cannot_listen_to_acks(node: Broker) -> None:
    queue = f"refreshbus.sidecar.shop.{uuid.uuid4().hex[:6]}"

    def bind_acks(ch: Any) -> None:
        ch.queue_declare(queue, durable=True, arguments={"x-expires": 60000})
        ch.queue_bind(queue, "refreshbus", routing_key="ack.#")

    assert "ack.#" in refused(bind_acks, node, "sidecar")
    for acks in ("refreshbus.operator.acks.quorum", "refreshbus.operator.acks"):
        refused(lambda ch, acks=acks: ch.basic_consume(acks, lambda *a: None), node, "sidecar")


def test_a_sidecar_cannot_read_bind_or_delete_another_pods_queue(node: Broker) -> None:
    """Same broker user, another connection (a compromised pod that learnt the victim's
    queue name from `rabbitmqctl`-style listings or guessed the prefix): the broker refuses
    every way in, because the real Bus declares its queue exclusive."""
    from refreshbus_sidecar.bus import Bus
    from refreshbus_wire import routing

    victim = Bus([url(node, "sidecar")], routing.PodIdentity("shop", "web-victim", "Deployment", "web"))
    victim.connect()
    try:
        queue = victim.queue
        assert queue.startswith("refreshbus.sidecar.shop.web-victim.")
        attempts: dict[str, Callable[[Any], object]] = {
            "consume": lambda ch: ch.basic_consume(queue, lambda *a: None),
            "get": lambda ch: ch.basic_get(queue),
            "bind": lambda ch: ch.queue_bind(queue, "refreshbus", routing_key="refresh.all"),
            "purge": lambda ch: ch.queue_purge(queue),
            "delete": lambda ch: ch.queue_delete(queue),
            "redeclare": lambda ch: ch.queue_declare(queue, exclusive=True),
        }
        for what, action in attempts.items():
            conn = pika.BlockingConnection(pika.URLParameters(url(node, "sidecar")))
            try:
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
                    action(conn.channel())
                assert err.value.reply_code == 405, (what, err.value)  # RESOURCE_LOCKED
            finally:
                if conn.is_open:
                    conn.close()
        # ... and the victim's queue still works: an event for it arrives.
        op = pika.BlockingConnection(pika.URLParameters(url(node, "operator")))
        try:
            op.channel().basic_publish(routing.EXCHANGE, routing.pod_key("shop", "web-victim"), b"nudge")
        finally:
            op.close()
        for _ in range(40):
            victim.wait(0.25)
            if victim.pending:
                break
        assert [d.body for d in victim.pending] == [b"nudge"]
    finally:
        victim.close()
    assert queue not in node.list_queues()  # gone with its connection: nothing piles up


def test_a_sidecar_queue_is_new_and_unguessable_on_every_connection(node: Broker) -> None:
    from refreshbus_sidecar.bus import Bus
    from refreshbus_wire import routing

    bus = Bus([url(node, "sidecar")], routing.PodIdentity("shop", "web-again", "Deployment", "web"))
    bus.connect()
    first = bus.queue
    bus.connect()  # a reconnect
    try:
        assert bus.queue != first
        queues = node.list_queues()
        assert bus.queue in queues
        assert first not in queues
    finally:
        bus.close()


def test_a_sidecar_cannot_create_other_queues_or_exchanges(node: Broker) -> None:
    refused(lambda ch: ch.queue_declare("my-queue"), node, "sidecar")
    refused(lambda ch: ch.exchange_declare("other", exchange_type="fanout"), node, "sidecar")
    refused(lambda ch: ch.basic_publish("amq.topic", "refresh.all", b"x"), node, "sidecar")


def test_the_operator_cannot_forge_acks_or_touch_sidecar_queues(node: Broker) -> None:
    assert "ack." in refused(
        lambda ch: ch.basic_publish("refreshbus", "ack.shop.web-1", b"x"), node, "operator"
    )
    refused(lambda ch: ch.queue_declare("refreshbus.sidecar.shop.web-1"), node, "operator")


def test_the_operator_moves_acks_off_a_classic_ack_queue_with_the_chart_credentials(node: Broker) -> None:
    """An upgrade on the embedded broker: the classic ack queue an earlier version declared
    holds an ack; the operator's user may unbind, drain and delete it."""
    from refreshbus_operator.acks import AckConsumer, Tag
    from refreshbus_wire import routing

    old = pika.BlockingConnection(pika.URLParameters(url(node, "operator")))
    channel = old.channel()
    channel.queue_purge(routing.OPERATOR_ACK_QUORUM_QUEUE)  # left by the tests before
    channel.queue_declare(routing.OPERATOR_ACK_QUEUE, durable=True)
    channel.queue_bind(routing.OPERATOR_ACK_QUEUE, routing.EXCHANGE, routing_key=routing.ACK_BINDING)
    old.close()
    pod = pika.BlockingConnection(pika.URLParameters(url(node, "sidecar")))
    key = routing.ack_key("shop", "web-1")
    pod.channel().basic_publish(routing.EXCHANGE, key, b"queued before the upgrade")
    pod.close()
    assert node.list_queues()[routing.OPERATOR_ACK_QUEUE] == 1

    async def upgraded_operator() -> list[bytes]:
        received: list[tuple[bytes, Tag]] = []
        consumer = AckConsumer([url(node, "operator")],
                               deliver=lambda body, tag: received.append((body, tag)))
        await consumer.start()
        try:
            consumer.set_active(True)
            for _ in range(200):
                if len(received) == 2:  # the ack was routed to both queues: both deliver it
                    break
                await asyncio.sleep(0.1)
            consumer.settle(tag for _, tag in received)
            consumer.set_active(False)
            while consumer.connected:
                await asyncio.sleep(0.1)
            consumer.set_active(True)  # the next round: the emptied old queue is deleted
            while not consumer.connected:
                await asyncio.sleep(0.1)
        finally:
            await consumer.stop()
        return [body for body, _ in received]

    assert asyncio.run(asyncio.wait_for(upgraded_operator(), 60)) == [b"queued before the upgrade"] * 2
    queues = node.list_queues()
    assert routing.OPERATOR_ACK_QUEUE not in queues
    assert queues[routing.OPERATOR_ACK_QUORUM_QUEUE] == 0


class ChartConfiguredBroker(Broker):
    """A node booted from the chart's own rabbitmq.conf, enabled_plugins and definitions file
    (loaded at boot, as in the StatefulSet); only the listener and file paths are local."""

    config: dict[str, str]
    definitions_json: str

    def start(self, timeout: float = 90.0) -> None:
        from refreshbus_testenv.procs import port_open, spawn, wait_until

        (self.workdir / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.workdir / "definitions.json").write_text(self.definitions_json)
        conf = self.config["rabbitmq.conf"]
        assert "listeners.tcp.default = 5672" in conf
        conf = conf.replace("listeners.tcp.default = 5672", f"listeners.tcp.1 = {self.host}:{self.port}")
        conf = conf.replace(
            "/etc/rabbitmq-definitions/definitions.json", str(self.workdir / "definitions.json")
        )
        (self.workdir / "rabbitmq.conf").write_text(conf)
        (self.workdir / "enabled_plugins").write_text(self.config["enabled_plugins"])
        proc = spawn([str(RABBITMQ_BIN / "rabbitmq-server")], self.log, env=self._env())
        self.pid = proc.pid
        wait_until(
            lambda: port_open(self.port, self.host), timeout, "RabbitMQ (chart config)", proc, self.log
        )
        self.ctl("await_startup", timeout=timeout)


def test_the_chart_configuration_boots_rabbitmq_and_loads_the_users(
    render: Any, definitions: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from refreshbus_sidecar.bus import Bus
    from refreshbus_wire import routing

    manifests = render("default")
    (config,) = [
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-config")
    ]
    broker = ChartConfiguredBroker(tmp_path_factory.mktemp("rabbitmq-chart-conf"))
    broker.config = config["data"]
    broker.definitions_json = json.dumps(definitions)
    try:
        broker.start()
        # The StatefulSet's liveness probe command answers (node name from the environment).
        sts = next(m for m in manifests if m["kind"] == "StatefulSet")
        probe = sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
        assert probe[0] == "rabbitmq-diagnostics"
        ping = subprocess.run(
            [str(RABBITMQ_BIN / probe[0]), *probe[1:]],
            env={**os.environ, **broker._env()}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
        out = broker.ctl("list_users", "-q", "--no-table-headers")
        assert "refreshbus-sidecar" in out
        assert "guest" not in out  # definitions at boot: no default user
        bus = Bus([url(broker, "sidecar")], routing.PodIdentity("shop", "web-0", "Deployment", "web"))
        bus.connect()
        bus.close()
    finally:
        broker.destroy()
