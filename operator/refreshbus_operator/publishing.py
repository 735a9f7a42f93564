"""Publishing refresh events with publisher confirms, on the event loop (aio-pika).

One long-lived task keeps the publisher's connection open (broker URLs in random order,
delay growing from ``retry_initial`` to ``retry_max``); it also declares the topology at
start-up, so acks have a queue to land in before the first refresh. :meth:`Publisher.publish`
sends one job's messages together and awaits their confirms together (pipelined, not one
round trip each). A message counts as sent only when the broker confirmed it; what was not
confirmed is re-sent after a backoff until the job's deadline. Re-sending is safe: sidecars
handle an event id at most once. A cancelled caller simply stops awaiting its confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from refreshbus_wire import CONTENT_TYPE

from refreshbus_operator import metrics
from refreshbus_operator.broker import (
    AckQueueType,
    Heartbeat,
    Link,
    PublishError,
    backoff,
    declare_topology,
    describe,
    usable_ack_queue_type,
)
from refreshbus_operator.tasks import cancel_and_wait

__all__ = ["PublishError", "Publisher"]

log = logging.getLogger(__name__)

#: The keeper wakes at least this often (liveness: a keeper silent for 4x this is stuck).
KEEPER_TICK = 5.0
#: How long start() waits for the first connection (a broker that is down is not fatal).
STARTUP_WAIT = 5.0
#: How long a publish waits for a connection being made before it counts as a failed attempt.
CONNECT_WAIT = 2.0


class Publisher:
    def __init__(self, urls: Sequence[str], retry_initial: float = 0.2, retry_max: float = 5.0,
                 ack_queue_type: AckQueueType = AckQueueType.QUORUM) -> None:
        self.urls = tuple(urls)
        self.ack_queue_type = ack_queue_type
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._link = Link(self.urls, "publisher", "publisher", log, publisher_confirms=True)
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self.heartbeat = Heartbeat(4 * KEEPER_TICK + 15)

    @property
    def connected(self) -> bool:
        return self._link.is_open

    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and not self.heartbeat.stale

    async def start(self) -> None:
        """Start the keeper and give it a moment to connect: the topology (the ack queue and
        its binding) should exist before the operator says it started, or acks sent right
        after would be unroutable. A broker that is down only delays this; it never fails it."""
        self._task = asyncio.create_task(self._keep(), name="refreshbus-publisher")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._link.up.wait(), STARTUP_WAIT)

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        await self._link.close()

    # -- the connection keeper -------------------------------------------------------------

    async def _prepare(self, channel: AbstractChannel) -> None:
        assert self._link.conn is not None  # open() connected before preparing the channel
        queue_type = await usable_ack_queue_type(self._link.conn, self.ack_queue_type, "publisher")
        self._exchange, _queue = await declare_topology(channel, queue_type)

    async def _keep(self) -> None:
        attempt = 0
        while True:
            self.heartbeat.beat()
            if self._link.is_open:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._link.lost.wait(), KEEPER_TICK)
                continue
            try:
                await self._link.open(self._prepare)
            except Exception as exc:
                delay = backoff(attempt, self.retry_initial, self.retry_max)
                attempt += 1
                log.warning("publisher: broker trouble (%s); reconnecting in %.1fs", describe(exc), delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self,
        messages: Sequence[tuple[str, bytes]],
        timeout: float,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """Publish and wait for every confirm; raises PublishError after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = list(messages)
        attempts = 0
        while pending:
            if not self._link.is_open:
                # The keeper may be (re)connecting right now: a moment's wait is not a failure.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._link.up.wait(), min(CONNECT_WAIT, deadline - loop.time()))
            exchange = self._exchange if self._link.is_open else None
            if exchange is None:
                reason = f"not connected ({self._link.last_error})"
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        pending, reason = await self._send(exchange, pending)
                except TimeoutError:
                    raise PublishError("the broker did not confirm before the deadline") from None
                if not pending:
                    return
            attempts += 1
            metrics.PUBLISH_RETRIES.inc()
            log.warning("publish failed (attempt %d): %s", attempts, reason)
            if on_retry is not None:
                on_retry(reason)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishError(f"broker unavailable: {reason}")
            await asyncio.sleep(min(backoff(attempts - 1, self.retry_initial, self.retry_max), remaining))

    @staticmethod
    async def _send(
        exchange: AbstractExchange, messages: list[tuple[str, bytes]]
    ) -> tuple[list[tuple[str, bytes]], str]:
        """Send all, await all confirms; returns the unconfirmed ones and why."""
        results = await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type=CONTENT_TYPE,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        app_id="refreshbus-operator",
                    ),
                    routing_key=key,
                    mandatory=False,
                )
                for key, body in messages
            ),
            return_exceptions=True,
        )
        failed: list[tuple[str, bytes]] = []
        reason = ""
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                failed.append(message)
                reason = reason or describe(result)
            else:
                metrics.PUBLISHED.inc()
        return failed, reason
