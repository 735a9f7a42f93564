"""Publishing refresh events with publisher confirms, in a thread that owns its connection.

pika's connections are single-threaded, and a blocking publish must never stall kopf's
event loop, so one dedicated thread owns a ``BlockingConnection`` in confirm mode. The
loop hands it jobs (a list of ``(routing key, body)``) and awaits a future. A message
counts as sent only when the broker confirmed it; on any broker trouble the thread
reconnects (broker URLs in random order, delay growing from ``retry_initial`` to
``retry_max``) and re-sends the unconfirmed rest of the job until the job's deadline.
Re-sending is safe: sidecars handle an event id at most once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from refreshbus_wire import CONTENT_TYPE
from refreshbus_wire.routing import ACK_BINDING, EXCHANGE, EXCHANGE_TYPE, OPERATOR_ACK_QUEUE

from refreshbus_operator import metrics

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The job could not be confirmed by the broker before its deadline."""


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


@dataclass
class _Job:
    messages: Sequence[tuple[str, bytes]]
    deadline: float
    future: cf.Future[None]
    on_retry: Callable[[str], None] | None = None
    sent: int = 0
    attempts: int = field(default=0)


class Publisher:
    """Owns the publishing thread. ``publish`` is the coroutine the operator awaits."""

    def __init__(self, urls: Sequence[str], retry_initial: float = 0.2, retry_max: float = 5.0) -> None:
        self.urls = tuple(urls)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="refreshbus-publisher", daemon=True)
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._stopping = threading.Event()
        self.connected = False
        metrics.BROKER_CONNECTED.labels(role="publisher").set(0)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._jobs.put(None)
        self._thread.join(timeout)

    def submit(
        self,
        messages: Sequence[tuple[str, bytes]],
        timeout: float,
        on_retry: Callable[[str], None] | None = None,
    ) -> cf.Future[None]:
        future: cf.Future[None] = cf.Future()
        if not messages:
            future.set_result(None)
            return future
        self._jobs.put(_Job(list(messages), time.monotonic() + timeout, future, on_retry))
        return future

    async def publish(
        self,
        messages: Sequence[tuple[str, bytes]],
        timeout: float,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """Publish and wait for every confirm; raises PublishError after ``timeout`` s."""
        await asyncio.wrap_future(self.submit(messages, timeout, on_retry))

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        # Connect (and declare the exchange and the ack queue) at once, so acks have a queue
        # to land in before the first refresh; failures here are retried on first publish.
        try:
            self._ensure()
        except Exception as exc:
            log.warning("publisher: broker not reachable at start-up (%s); will retry", exc)
        while not self._stopping.is_set():
            try:
                job = self._jobs.get(timeout=1.0)
            except queue.Empty:
                self._heartbeat()
                continue
            if job is None:
                break
            self._do(job)
        self._close()

    def _heartbeat(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.process_data_events(0)
        except Exception as exc:  # the broker went away while idle
            log.warning("publisher connection lost while idle: %s", exc)
            self._close()

    def _do(self, job: _Job) -> None:
        while not self._stopping.is_set():
            try:
                self._ensure()
                while job.sent < len(job.messages):
                    key, body = job.messages[job.sent]
                    self._channel.basic_publish(
                        exchange=EXCHANGE,
                        routing_key=key,
                        body=body,
                        properties=pika.BasicProperties(
                            content_type=CONTENT_TYPE, delivery_mode=2, app_id="refreshbus-operator"
                        ),
                    )
                    job.sent += 1
                    metrics.PUBLISHED.inc()
                job.future.set_result(None)
                return
            except Exception as exc:
                # NackError, connection/channel errors, socket errors: all "broker trouble".
                self._close()
                job.attempts += 1
                metrics.PUBLISH_RETRIES.inc()
                reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
                log.warning("publish failed (attempt %d): %s", job.attempts, reason)
                if job.on_retry is not None:
                    try:
                        job.on_retry(reason)
                    except Exception:
                        log.exception("on_retry callback failed")
                delay = backoff(job.attempts - 1, self.retry_initial, self.retry_max)
                remaining = job.deadline - time.monotonic()
                if remaining <= 0:
                    job.future.set_exception(PublishError(f"broker unavailable: {reason}"))
                    return
                if self._stopping.wait(min(delay, remaining)):
                    break
        if not job.future.done():
            job.future.set_exception(PublishError("operator is stopping"))

    def _ensure(self) -> None:
        if (
            self._conn is not None
            and self._conn.is_open
            and self._channel is not None
            and self._channel.is_open
        ):
            return
        self._close()
        self._conn = connect(self.urls)
        channel = self._conn.channel()
        channel.confirm_delivery()
        declare_topology(channel)
        self._channel = channel
        self.connected = True
        metrics.BROKER_CONNECTED.labels(role="publisher").set(1)
        log.info("publisher connected to the broker")

    def _close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if self.connected:
            log.info("publisher disconnected from the broker")
        self.connected = False
        metrics.BROKER_CONNECTED.labels(role="publisher").set(0)
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass
