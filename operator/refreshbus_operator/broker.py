"""The operator's broker connections, shared by the publisher and the ack consumer.

Everything here runs on kopf's event loop (aio-pika): no threads. Broker URLs are tried in
a random order on every (re)connect (failover as ActiveMQ's), with a capped exponential
backoff between rounds of attempts. :class:`Link` is one connection + channel for one role
(``publisher`` / ``consumer``), with its ``broker_connected{role}`` gauge and the
connected/disconnected log lines; :func:`declare_topology` is what both declare (the
exchange and the operators' shared ack queue); :func:`usable_ack_queue_type` falls back to
the classic ack queue when the broker refuses the quorum one; :func:`retire_ack_queue` moves
acks off the ack queue of the other type (docs/broker.md, "Migrating the ack queue").
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from refreshbus_wire.routing import ACK_BINDING, EXCHANGE, OPERATOR_ACK_QUEUE, OPERATOR_ACK_QUORUM_QUEUE

from refreshbus_operator import metrics

log = logging.getLogger(__name__)

#: Bound on one connect + channel set-up; a broker that accepts TCP but never answers must
#: not hold a worker (and so its liveness) forever.
CONNECT_TIMEOUT = 15.0
HEARTBEAT = 30


class PublishError(Exception):
    """The job could not be confirmed by the broker before its deadline (also: no URLs)."""


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential, capped, with +-20 % jitter so replicas do not retry in lockstep."""
    delay = min(maximum, initial * (2 ** min(attempt, 16)))
    return float(delay * random.uniform(0.8, 1.2))


def describe(exc: BaseException) -> str:
    """``Type: message`` for logs and conditions (aio-pika's messages never carry the URL's
    credentials: they name the host and port only)."""
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


async def connect(urls: Sequence[str], name: str = "refreshbus-operator") -> AbstractConnection:
    """Connect to the first URL that answers, in a random order."""
    if not urls:
        raise PublishError("no broker URLs configured (REFRESHBUS_BROKER_URLS)")
    order = list(urls)
    random.shuffle(order)
    error: BaseException | None = None
    for url in order:
        try:
            return await aio_pika.connect(
                url, timeout=5, heartbeat=HEARTBEAT, client_properties={"connection_name": name}
            )
        except Exception as exc:  # unreachable, refused, timed out, bad credentials: try the next
            error = exc
    assert error is not None
    raise error


class AckQueueType(StrEnum):
    """What kind of queue holds the acks. ``quorum`` (default) is replicated over the broker
    cluster's nodes (Raft), so queued acks survive the loss of a node; a single node holds
    one just as well. ``classic`` is for brokers without quorum queues (RabbitMQ < 3.8)."""

    QUORUM = "quorum"
    CLASSIC = "classic"

    @property
    def queue(self) -> str:
        return OPERATOR_ACK_QUORUM_QUEUE if self is AckQueueType.QUORUM else OPERATOR_ACK_QUEUE

    @property
    def other(self) -> AckQueueType:
        return AckQueueType.CLASSIC if self is AckQueueType.QUORUM else AckQueueType.QUORUM


async def declare_topology(
    channel: AbstractChannel, queue_type: AckQueueType = AckQueueType.QUORUM
) -> tuple[AbstractExchange, AbstractQueue]:
    """The exchange and the operators' shared, durable ack queue (idempotent)."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    # A classic queue is declared without x-queue-type, exactly as before quorum queues
    # existed here, so the declare stays equivalent to the queue older versions made.
    queue = await channel.declare_queue(
        queue_type.queue,
        durable=True,
        arguments={"x-queue-type": "quorum"} if queue_type is AckQueueType.QUORUM else None,
    )
    await queue.bind(exchange, routing_key=ACK_BINDING)
    return exchange, queue


async def usable_ack_queue_type(conn: AbstractConnection, wanted: AckQueueType, role: str) -> AckQueueType:
    """The ack queue type this connection can use: ``wanted``, unless that is quorum and the
    broker refuses the operator's user the quorum queue's name -- a broker of one's own whose
    permissions were written for the classic queue's exact name, as documented before the
    quorum queue. Then the classic queue, with a WARNING naming the fix at every connect and
    ``refreshbus_operator_ack_queue_fallback{role} 1``.

    Falling back rather than stopping (or failing readiness): the classic queue is what such
    a broker served before the upgrade, so refreshes go on with the guarantees they had (acks
    survive a broker restart, not the loss of the node holding the queue); stopping would halt
    every refresh, and a readiness failure would also take the injection webhook out of its
    Service. Any other refusal (the exchange, the classic queue) is raised as before.

    Probes on a channel of its own: a refused declare closes the channel it was sent on.
    """
    fallback = metrics.ACK_QUEUE_FALLBACK.labels(role=role)
    if wanted is AckQueueType.QUORUM:
        channel = await conn.channel()
        try:
            await declare_topology(channel, wanted)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            if wanted.queue not in str(exc):
                raise
            log.warning(
                "%s: the broker refuses the quorum ack queue %s (%s); using the classic ack queue %s "
                "instead: acks queued on a lost broker node are not kept. Fix: grant the operator's "
                "broker user configure/write/read on %s (docs/broker.md, \"Your own RabbitMQ\"), or set "
                "operator.ackQueueType=classic to silence this",
                role, wanted.queue, describe(exc), AckQueueType.CLASSIC.queue,
                r"^(refreshbus|refreshbus\.operator\.acks(\.quorum)?)$",
            )  # fmt: skip
            fallback.set(1)
            return AckQueueType.CLASSIC
        await channel.close()
    fallback.set(0)
    return wanted


async def retire_ack_queue(
    conn: AbstractConnection,
    queue_type: AckQueueType,
    consume: Callable[[AbstractIncomingMessage], Awaitable[None]],
    prefetch: int,
) -> str:
    """Move the acks off the ack queue of the *other* type, if there is one (an upgrade
    from a classic ack queue, or a switch back): unbind it, so no new ack lands there, then
    delete it if it is empty and unconsumed, else consume what it still holds (this
    connection's next open deletes it). Returns ``absent``, ``deleted``, ``draining``, or
    ``kept`` when the broker refused (logged; it never stops the operator's own queue).

    Runs on a channel of its own: a passive declare of a missing queue, or a delete that
    another replica's consumer refuses, closes the channel it was sent on.
    """
    retired = queue_type.other
    channel = await conn.channel()
    try:
        try:
            old = await channel.declare_queue(retired.queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:  # nothing to migrate (the usual case)
            return "absent"
        await old.unbind(EXCHANGE, routing_key=ACK_BINDING)
        found = old.declaration_result
        if found.message_count == 0 and found.consumer_count == 0:
            # A classic queue re-checks both at the broker; a quorum queue refuses those
            # flags (a connection error), so for it the counts just read are the check.
            guarded = retired is AckQueueType.CLASSIC
            await old.delete(if_unused=guarded, if_empty=guarded)
            log.info("deleted the retired, empty %s ack queue %s", retired.value, retired.queue)
            await channel.close()
            return "deleted"
        log.info("draining the retired %s ack queue %s (%d acks, %d consumers)",
                 retired.value, retired.queue, found.message_count, found.consumer_count)
        await channel.set_qos(prefetch_count=prefetch)
        await old.consume(consume, no_ack=False)
        return "draining"
    except aio_pika.exceptions.ChannelClosed as exc:
        # Refused (the operator's user may not touch the old name) or overtaken (an ack or a
        # consumer came before the delete): the old queue stays, the operator's own queue
        # works all the same, and the next connect tries again.
        log.warning("could not retire the %s ack queue %s: %s (docs/broker.md, \"Migrating the ack queue\")",
                    retired.value, retired.queue, describe(exc))
        return "kept"


class Link:
    """One connection + channel for one ``role``. ``lost`` is set when the broker closes
    either under us (not when we close it)."""

    def __init__(
        self,
        urls: Sequence[str],
        role: str,
        name: str,
        logger: logging.Logger = log,
        publisher_confirms: bool = False,
    ) -> None:
        self.urls = tuple(urls)
        self.role = role
        self.name = name  # in log lines: "<name> connected to the broker"
        self.log = logger
        self.publisher_confirms = publisher_confirms
        self.conn: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.lost = asyncio.Event()
        self.up = asyncio.Event()
        self.last_error = "not connected to the broker yet"
        metrics.BROKER_CONNECTED.labels(role=role).set(0)

    @property
    def is_open(self) -> bool:
        return (
            self.conn is not None
            and not self.conn.is_closed
            and self.channel is not None
            and not self.channel.is_closed
        )

    async def open(self, prepare: Callable[[AbstractChannel], Awaitable[None]]) -> AbstractChannel:
        """(Re)connect; ``prepare(channel)`` sets the channel up (declare, consume) before the
        link counts as connected. Raises on any broker trouble, within CONNECT_TIMEOUT."""
        await self.close()
        self.lost.clear()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                conn = await connect(self.urls)
                self.conn = conn
                channel = await conn.channel(publisher_confirms=self.publisher_confirms)
                await prepare(channel)
        except BaseException as exc:
            self.last_error = describe(exc)
            await self.close()
            raise
        self.channel = channel
        conn.close_callbacks.add(self._on_close)
        channel.close_callbacks.add(self._on_close)
        self.up.set()
        metrics.BROKER_CONNECTED.labels(role=self.role).set(1)
        self.log.info("%s connected to the broker", self.name)
        return channel

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        if self.channel is None:  # closed by us
            return
        self.last_error = describe(exc) if exc is not None else "connection closed"
        self.up.clear()
        self.lost.set()

    async def close(self) -> None:
        conn, channel = self.conn, self.channel
        self.conn = self.channel = None
        self.up.clear()
        if channel is not None:
            self.log.info("%s disconnected from the broker", self.name)
        metrics.BROKER_CONNECTED.labels(role=self.role).set(0)
        if conn is not None and not conn.is_closed:
            try:
                async with asyncio.timeout(5):
                    await conn.close()
            except Exception as exc:  # the broker is gone: nothing left to close cleanly
                self.log.debug("%s: closing the connection: %s", self.name, exc)


class Heartbeat:
    """When a long-lived worker task last showed progress; ``stale`` after ``limit`` s."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.at > self.limit
