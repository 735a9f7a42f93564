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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from refreshbus_wire import CONTENT_TYPE
from refreshbus_wire.routing import EXCHANGE

from refreshbus_operator import metrics
from refreshbus_operator.broker import (  # re-exported: callers import them from here too
    LinkThread,
    PublishError,
    backoff,
    connect,
    connection_parameters,
    declare_topology,
)

__all__ = [
    "PublishError",
    "Publisher",
    "backoff",
    "connect",
    "connection_parameters",
    "declare_topology",
]

log = logging.getLogger(__name__)


@dataclass
class _Job:
    messages: Sequence[tuple[str, bytes]]
    deadline: float
    future: cf.Future[None]
    on_retry: Callable[[str], None] | None = None
    sent: int = 0
    attempts: int = field(default=0)


class Publisher(LinkThread):
    """Owns the publishing thread. ``publish`` is the coroutine the operator awaits."""

    def __init__(self, urls: Sequence[str], retry_initial: float = 0.2, retry_max: float = 5.0) -> None:
        super().__init__(urls, "publisher", "publisher", "refreshbus-publisher", log)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._jobs: queue.Queue[_Job | None] = queue.Queue()

    def _wake(self) -> None:
        self._jobs.put(None)

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
        self._link.close()

    def _heartbeat(self) -> None:
        if self._link.conn is None:
            return
        try:
            self._link.conn.process_data_events(0)
        except Exception as exc:  # the broker went away while idle
            log.warning("publisher connection lost while idle: %s", exc)
            self._link.close()

    def _do(self, job: _Job) -> None:
        while not self._stopping.is_set():
            try:
                self._ensure()
                while job.sent < len(job.messages):
                    key, body = job.messages[job.sent]
                    self._link.channel.basic_publish(
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
                self._link.close()
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
        if not self._link.is_open:
            self._link.open(_confirm_and_declare)


def _confirm_and_declare(channel: Any) -> None:
    channel.confirm_delivery()
    declare_topology(channel)
