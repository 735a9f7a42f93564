"""The operator's broker connections, shared by the publisher and the ack consumer.

Everything here runs on kopf's event loop (aio-pika): no threads. Broker URLs are tried in
a random order on every (re)connect (failover as ActiveMQ's), with a capped exponential
backoff between rounds of attempts. :class:`Link` is one connection + channel for one role
(``publisher`` / ``consumer``), with its ``broker_connected{role}`` gauge and the
connected/disconnected log lines; :func:`declare_topology` is what both declare (the
exchange and the operators' shared ack queue).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from refreshbus_wire.routing import ACK_BINDING, EXCHANGE, OPERATOR_ACK_QUEUE

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


async def declare_topology(channel: AbstractChannel) -> tuple[AbstractExchange, AbstractQueue]:
    """The exchange and the operators' shared, durable ack queue (idempotent)."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(OPERATOR_ACK_QUEUE, durable=True)
    await queue.bind(exchange, routing_key=ACK_BINDING)
    return exchange, queue


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
