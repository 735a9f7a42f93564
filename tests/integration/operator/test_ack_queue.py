"""The operator's ack queue on the real RabbitMQ: a quorum queue by default, and the move
of queued acks from the classic ack queue of earlier versions (and back), which RabbitMQ
cannot do in place: a queue's type is fixed when it is declared."""

from __future__ import annotations

import logging

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from prometheus_client import REGISTRY
from refreshbus_operator.acks import AckConsumer, Tag
from refreshbus_operator.broker import AckQueueType, declare_topology
from refreshbus_operator.publishing import Publisher
from refreshbus_wire import routing
from test_broker_io import run, until

pytestmark = pytest.mark.integration


async def queue_exists(conn: aio_pika.abc.AbstractConnection, name: str) -> int | None:
    """Ready messages in the queue, or None if it does not exist."""
    channel = await conn.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    count = queue.declaration_result.message_count
    await channel.close()
    return count


async def fresh(channel: AbstractChannel) -> None:
    """Neither ack queue exists (the session broker is shared by every test)."""
    for name in (routing.OPERATOR_ACK_QUEUE, routing.OPERATOR_ACK_QUORUM_QUEUE):
        await channel.queue_delete(name)


def test_a_classic_ack_queue_cannot_become_a_quorum_queue_in_place(running_broker):
    """Why the quorum ack queue has a name of its own."""

    async def main() -> None:
        conn = await aio_pika.connect(running_broker.url("refreshbus-operator"))
        await fresh(await conn.channel())
        await declare_topology(await conn.channel(), AckQueueType.CLASSIC)
        channel = await conn.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="x-queue-type"):
            await channel.declare_queue(routing.OPERATOR_ACK_QUEUE, durable=True,
                                        arguments={"x-queue-type": "quorum"})
        await fresh(await conn.channel())
        await conn.close()

    run(main())


@pytest.mark.parametrize("old", [AckQueueType.CLASSIC, AckQueueType.QUORUM])
def test_acks_queued_in_the_other_types_queue_are_delivered_then_that_queue_is_deleted(
    running_broker, old
):
    """An upgrade from a version with the classic ack queue (or a switch back to it): the
    acks waiting there reach the new consumer, the old queue gets no new ones, and it is
    deleted once empty."""
    url = running_broker.url("refreshbus-operator")
    new = old.other

    async def main() -> None:
        conn = await aio_pika.connect(url)
        await fresh(await conn.channel())
        # What the previous version left: its queue, bound, with acks nobody consumed yet.
        exchange, _ = await declare_topology(await conn.channel(), old)
        for i in range(3):
            await exchange.publish(aio_pika.Message(f"queued-{i}".encode()),
                                   routing_key=routing.ack_key("ns", f"p{i}"))
        received: list[tuple[bytes, Tag]] = []
        consumer = AckConsumer([url], deliver=lambda body, tag: received.append((body, tag)),
                               queue_type=new)
        await consumer.start()
        try:
            consumer.set_active(True)
            await until(lambda: len(received) == 3, 20, "the acks queued in the old queue")
            # New acks reach the new queue only: the old one is unbound.
            await exchange.publish(aio_pika.Message(b"after"), routing_key=routing.ack_key("ns", "p9"))
            await until(lambda: len(received) == 4, 20, "an ack sent after the upgrade")
            assert sorted(body for body, _ in received) == [b"after", b"queued-0", b"queued-1", b"queued-2"]
            consumer.settle(tag for _, tag in received)
            # Rounds finished: the consumer closes; the next round's open deletes the old queue.
            consumer.set_active(False)
            await until(lambda: not consumer.connected, 20, "the idle consumer to close")
            assert await queue_exists(conn, old.queue) == 0
            consumer.set_active(True)
            await until(lambda: consumer.connected, 20, "the consumer to reopen")
            assert await queue_exists(conn, old.queue) is None
            assert await queue_exists(conn, new.queue) == 0
        finally:
            await consumer.stop()
            await fresh(await conn.channel())
            await conn.close()

    run(main())


def test_the_default_ack_queue_is_a_quorum_queue_even_on_a_single_node(running_broker):
    async def main() -> None:
        conn = await aio_pika.connect(running_broker.url("refreshbus-operator"))
        await fresh(await conn.channel())
        await declare_topology(await conn.channel())
        await conn.close()
        listed = running_broker.ctl("list_queues", "-q", "--no-table-headers", "name", "type")
        assert f"{routing.OPERATOR_ACK_QUORUM_QUEUE}\tquorum" in listed
        conn = await aio_pika.connect(running_broker.url("refreshbus-operator"))
        await fresh(await conn.channel())
        await conn.close()

    run(main())


def test_an_old_ack_queue_the_operator_may_not_touch_never_stops_its_own(running_broker):
    """A broker of one's own whose operator user was given the new queue's name only: the
    old queue cannot be retired (refused, logged), and acks flow through the new one."""
    user, password = "refreshbus-operator-narrow", "narrow-secret"
    running_broker.ctl("add_user", user, password)
    allowed = r"^(refreshbus|refreshbus\.operator\.acks\.quorum)$"
    running_broker.ctl("set_permissions", "-p", "/", user, allowed, allowed, allowed)
    url = running_broker.url(user, password)

    async def main() -> None:
        admin = await aio_pika.connect(running_broker.url())
        await fresh(await admin.channel())
        exchange, _ = await declare_topology(await admin.channel(), AckQueueType.CLASSIC)
        received: list[tuple[bytes, Tag]] = []
        consumer = AckConsumer([url], deliver=lambda body, tag: received.append((body, tag)))
        await consumer.start()
        try:
            consumer.set_active(True)
            await until(lambda: consumer.connected, 20, "the consumer to connect")
            await exchange.publish(aio_pika.Message(b"new"), routing_key=routing.ack_key("ns", "p"))
            await until(lambda: received, 20, "an ack through the operator's own queue")
            consumer.settle(tag for _, tag in received)
        finally:
            await consumer.stop()
            await fresh(await admin.channel())
            await admin.close()

    try:
        run(main())
    finally:
        running_broker.ctl("delete_user", user)


def _fallback(role: str) -> float | None:
    return REGISTRY.get_sample_value("refreshbus_operator_ack_queue_fallback", {"role": role})


def test_a_broker_refusing_the_quorum_queue_gets_the_classic_one_with_a_warning(running_broker, caplog):
    """A broker of one's own whose operator user still has the permissions documented before
    the quorum queue (the classic queue's exact name): the operator must not stop refreshing.
    It falls back to the classic queue, says so (WARNING naming the fix, gauge at 1), acks flow;
    once the permissions are widened its next connect moves to the quorum queue by itself."""
    user, password = "refreshbus-operator-exact", "exact-secret"
    running_broker.ctl("add_user", user, password)
    exact = r"^(refreshbus|refreshbus\.operator\.acks)$"
    running_broker.ctl("set_permissions", "-p", "/", user, exact, exact, exact)
    url = running_broker.url(user, password)

    async def main() -> None:
        admin = await aio_pika.connect(running_broker.url())
        await fresh(await admin.channel())
        received: list[tuple[bytes, Tag]] = []
        publisher = Publisher([url])  # both with the default ackQueueType: quorum
        consumer = AckConsumer([url], deliver=lambda body, tag: received.append((body, tag)))
        await publisher.start()
        await consumer.start()
        try:
            consumer.set_active(True)
            await until(lambda: consumer.connected and publisher.connected, 20, "both to connect")
            assert _fallback("consumer") == 1
            assert _fallback("publisher") == 1
            assert await queue_exists(admin, routing.OPERATOR_ACK_QUORUM_QUEUE) is None
            await publisher.publish([(routing.ack_key("ns", "p"), b"through-classic")], timeout=10)
            await until(lambda: received, 20, "an ack through the classic queue")
            assert [body for body, _ in received] == [b"through-classic"]
            consumer.settle(tag for _, tag in received)
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                        and "refuses the quorum ack queue" in r.getMessage()]  # fmt: skip
            assert warnings, caplog.text
            assert "ACCESS_REFUSED" in warnings[0]
            assert "operator.ackQueueType=classic" in warnings[0]

            # The fix: the permissions of the chart README. The next round's connect takes the
            # quorum queue and retires the classic one.
            wide = r"^(refreshbus|refreshbus\.operator\.acks(\.quorum)?)$"
            running_broker.ctl("set_permissions", "-p", "/", user, wide, wide, wide)
            consumer.set_active(False)
            await until(lambda: not consumer.connected, 20, "the idle consumer to close")
            consumer.set_active(True)
            await until(lambda: consumer.connected, 20, "the consumer to reopen")
            assert _fallback("consumer") == 0
            assert await queue_exists(admin, routing.OPERATOR_ACK_QUORUM_QUEUE) == 0
            assert await queue_exists(admin, routing.OPERATOR_ACK_QUEUE) is None
        finally:
            await consumer.stop()
            await publisher.stop()
            await fresh(await admin.channel())
            await admin.close()

    caplog.set_level(logging.WARNING, logger="refreshbus_operator.broker")
    try:
        run(main())
    finally:
        running_broker.ctl("delete_user", user)
