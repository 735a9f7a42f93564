"""The operator's broker connections, shared by the publisher and the ack consumer.

Connection parameters (broker URLs in random failover order), the topology both declare
(exchange + the operators' shared ack queue), the reconnect backoff, and :class:`Link`:
one thread's ``BlockingConnection`` and channel, with its ``broker_connected{role}`` gauge
and the connected/disconnected log lines. pika connections are single-threaded: a Link
is only ever used by the thread that opened it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pika
from refreshbus_wire.routing import ACK_BINDING, EXCHANGE, EXCHANGE_TYPE, OPERATOR_ACK_QUEUE

from refreshbus_operator import metrics

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The job could not be confirmed by the broker before its deadline (also: no URLs)."""


def connection_parameters(urls: Sequence[str], heartbeat: int = 30) -> list[pika.URLParameters]:
    """One parameter set per URL, shuffled (failover order is random, as ActiveMQ's)."""
    params = []
    for url in urls:
        p = pika.URLParameters(url)
        p.heartbeat = heartbeat
        p.blocked_connection_timeout = 30
        p.connection_attempts = 1
        p.socket_timeout = 5
        p.client_properties = {"connection_name": "refreshbus-operator"}
        params.append(p)
    random.shuffle(params)
    return params


def connect(urls: Sequence[str]) -> pika.BlockingConnection:
    if not urls:
        raise PublishError("no broker URLs configured (REFRESHBUS_BROKER_URLS)")
    return pika.BlockingConnection(connection_parameters(urls))


def declare_topology(channel: Any) -> None:
    """The exchange and the operators' shared, durable ack queue (idempotent)."""
    channel.exchange_declare(exchange=EXCHANGE, exchange_type=EXCHANGE_TYPE, durable=True)
    channel.queue_declare(queue=OPERATOR_ACK_QUEUE, durable=True)
    channel.queue_bind(queue=OPERATOR_ACK_QUEUE, exchange=EXCHANGE, routing_key=ACK_BINDING)


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential, capped, with +-20 % jitter so replicas do not retry in lockstep."""
    delay = min(maximum, initial * (2 ** min(attempt, 16)))
    return float(delay * random.uniform(0.8, 1.2))


class Link:
    """One thread's connection + channel for one ``role`` (``publisher`` / ``consumer``)."""

    def __init__(self, urls: Sequence[str], role: str, name: str, logger: logging.Logger = log) -> None:
        self.urls = tuple(urls)
        self.role = role
        self.name = name  # in log lines: "<name> connected to the broker"
        self.log = logger
        self.conn: Any = None
        self.channel: Any = None
        self.connected = False
        metrics.BROKER_CONNECTED.labels(role=role).set(0)

    @property
    def is_open(self) -> bool:
        return (
            self.conn is not None
            and self.conn.is_open
            and self.channel is not None
            and self.channel.is_open
        )

    def open(self, prepare: Callable[[Any], None]) -> Any:
        """(Re)connect; ``prepare(channel)`` sets the channel up (declare, confirm, consume)
        before the link counts as connected. Raises on any broker trouble."""
        self.close()
        self.conn = connect(self.urls)
        channel = self.conn.channel()
        prepare(channel)
        self.channel = channel
        self.connected = True
        metrics.BROKER_CONNECTED.labels(role=self.role).set(1)
        self.log.info("%s connected to the broker", self.name)
        return channel

    def close(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        if self.connected:
            self.log.info("%s disconnected from the broker", self.name)
        self.connected = False
        metrics.BROKER_CONNECTED.labels(role=self.role).set(0)
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass


class LinkThread:
    """Base of the publisher and the ack consumer: a daemon thread (``_run``) that owns one
    :class:`Link`. ``stop`` sets ``_stopping``, wakes the thread (``_wake``) and joins it."""

    def __init__(
        self, urls: Sequence[str], role: str, name: str, thread_name: str, logger: logging.Logger
    ) -> None:
        self.urls = tuple(urls)
        self._link = Link(self.urls, role, name, logger)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @property
    def connected(self) -> bool:
        return self._link.connected

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)

    def _wake(self) -> None:
        """Make a waiting ``_run`` notice ``_stopping`` at once."""

    def _run(self) -> None:
        raise NotImplementedError
