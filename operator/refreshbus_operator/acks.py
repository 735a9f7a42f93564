"""Consuming acks from the operators' shared durable queue and routing them to rounds.

:class:`AckConsumer` is one task on the event loop (aio-pika) that consumes
``refreshbus.operator.acks`` with manual acknowledgements and a prefetch window, only
while this replica has refreshes in flight (a standby replica never takes acks away from
the active one). A delivery is acknowledged to the broker only after the status PATCH that
contains it succeeded (:meth:`AckConsumer.settle`). Deliveries whose status was never
written (round cancelled, operator stopping, status writes failing) are never acked: the
broker redelivers them when this consumer's channel closes (stop, broker trouble, or idle),
so nothing is lost between the queue and the status.

:class:`AckRouter` decodes each message, hands it to the round with that event id, and
counts and drops the rest: malformed messages, acks for an event id no round knows (kept
for ``grace`` seconds first, since after a restart acks can arrive before the round is
resumed), acks for finished rounds, and acks from pods that were not targets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from refreshbus_wire import Ack, ProtocolError, decode

from refreshbus_operator import metrics
from refreshbus_operator.ackidentity import AckVerifier, Mode, Verdict
from refreshbus_operator.broker import (
    AckQueueType,
    Heartbeat,
    Link,
    backoff,
    declare_topology,
    describe,
    retire_ack_queue,
    usable_ack_queue_type,
)
from refreshbus_operator.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: One broker delivery of an ack; acknowledged (settled) once its status is durable.
Tag = AbstractIncomingMessage

#: The consumer task wakes at least this often (liveness: silent for much longer = stuck).
CONSUMER_TICK = 5.0


class AckConsumer:
    def __init__(
        self,
        urls: Sequence[str],
        deliver: Callable[[bytes, Tag], object],
        prefetch: int = 1000,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        queue_type: AckQueueType = AckQueueType.QUORUM,
    ) -> None:
        self.urls = tuple(urls)
        self.queue_type = queue_type
        self.deliver = deliver
        self.prefetch = prefetch
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._link = Link(self.urls, "consumer", "ack consumer", log)
        self._active = False
        self._wake = asyncio.Event()
        self._settle: list[Tag] = []
        self._task: asyncio.Task[None] | None = None
        self.heartbeat = Heartbeat(4 * CONSUMER_TICK + 15)
        #: Called after a *re*connect: messages may have been lost with the old connection.
        self.on_reconnect: Callable[[], None] = lambda: None

    @property
    def connected(self) -> bool:
        return self._link.is_open

    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and not self.heartbeat.stale

    def set_active(self, active: bool) -> None:
        if active != self._active:
            self._active = active
            self._wake.set()

    def settle(self, tags: Iterable[Tag]) -> None:
        """Acknowledge these deliveries to the broker (their status is durable)."""
        self._settle.extend(tags)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="refreshbus-ack-consumer")

    async def stop(self) -> None:
        """Ack what is settled, then close: every unsettled delivery goes back to the queue."""
        await cancel_and_wait([self._task])
        await self._drain()
        await self._link.close()

    # -- the task --------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        lost = False
        while True:
            self.heartbeat.beat()
            self._wake.clear()
            if not self._active:
                if self._link.channel is not None:
                    await self._drain()
                    await self._link.close()
                lost = False  # a deliberate close: nothing was lost
                await self._idle()
                continue
            if not self._link.is_open:
                # A link still holding a channel that is no longer open broke under us (e.g. a
                # broker restart): note it before open() resets it, even if this reopen fails.
                lost = lost or self._link.channel is not None
                try:
                    await self._link.open(self._prepare)
                except Exception as exc:
                    delay = backoff(attempt, self.retry_initial, self.retry_max)
                    attempt += 1
                    log.warning("ack consumer: broker trouble (%s); reconnecting in %.1fs",
                                describe(exc), delay)
                    await self._idle(delay)
                    continue
                attempt = 0
                if lost:
                    lost = False
                    self.on_reconnect()
            await self._drain()
            await self._idle()

    async def _idle(self, timeout: float = CONSUMER_TICK) -> None:
        """Until woken (settle, activity change), the link is lost, or ``timeout``."""
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._link.lost.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _prepare(self, channel: AbstractChannel) -> None:
        await channel.set_qos(prefetch_count=self.prefetch)
        assert self._link.conn is not None  # open() connected before preparing the channel
        queue_type = await usable_ack_queue_type(self._link.conn, self.queue_type, "consumer")
        _exchange, queue = await declare_topology(channel, queue_type)
        await queue.consume(self._on_message, no_ack=False)
        await retire_ack_queue(self._link.conn, queue_type, self._on_message, self.prefetch)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.deliver(message.body, message)

    async def _drain(self) -> None:
        tags, self._settle = self._settle, []
        # Together, not one socket drain after another: a flood of dropped acks is settled
        # as fast as it arrives, so the prefetch window keeps moving.
        await asyncio.gather(*(self._ack(tag) for tag in tags))

    @staticmethod
    async def _ack(tag: Tag) -> None:
        try:
            await tag.ack()
        except Exception as exc:  # its channel is gone: redelivered later; rounds dedupe per pod
            log.debug("could not ack delivery %s: %s", tag.delivery_tag, exc)


class AckSink(Protocol):
    """What a refresh round offers the router."""

    def fold(self, ack: Ack, tag: Tag) -> str:
        """Fold one ack; return its outcome (``folded``, ``duplicate``, ``not_target``, ``late``).
        For ``folded`` the round settles the tag itself once status is written."""
        ...

    def refused(self, ack: Ack, verdict: Verdict, enforced: bool) -> None:
        """Show that an ack for this round failed its identity check (``enforced``: it
        was refused; else accepted in ``warn`` mode)."""
        ...

    def pod_uid(self, pod: str) -> str | None:
        """The uid of target ``pod`` as resolved (None when unknown, e.g. after a resume)."""
        ...


class AckRouter:
    """Event-loop side of ack handling (not thread-safe: call on the loop only)."""

    def __init__(
        self,
        settle: Callable[[Iterable[Tag]], None],
        grace: float = 10.0,
        max_parked: int = 100,
        verifier: AckVerifier | None = None,
    ) -> None:
        self.settle = settle
        self.grace = grace
        #: Parked acks hold unsettled deliveries: past this many, the oldest is dropped at
        #: once, so a flood of acks for unknown events can never fill the prefetch window
        #: and hold up the real acks queued behind it for a grace period per window.
        self.max_parked = max_parked
        #: Checks who sent each ack before it is routed (None: believe the ack's ``pod``).
        self.verifier = verifier
        self._checks: set[asyncio.Task[None]] = set()
        self.rounds: dict[str, AckSink] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.parked: dict[str, list[tuple[Ack, Tag, float]]] = {}
        self._parked_count = 0
        self.on_change: Callable[[], None] = lambda: None

    def handle(self, body: bytes, tag: Tag) -> str:
        try:
            message = decode(body)
            if not isinstance(message, Ack):
                raise ProtocolError(f"expected an ack, got a {message.type.value} message")
        except ProtocolError as exc:
            log.warning("dropping malformed ack: %s", exc)
            return self._drop(tag, "malformed")
        if self.verifier is None:
            return self._route(message, tag)
        task = asyncio.get_running_loop().create_task(self._check(message, tag), name=f"ack {message.id}")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        return "checking"

    async def _check(self, ack: Ack, tag: Tag) -> None:
        """Route the ack only if it comes from the pod it speaks for (or, in ``warn`` mode,
        route it anyway, saying so)."""
        assert self.verifier is not None
        sink = self.rounds.get(ack.event_id)
        verdict = await self.verifier.verify(ack, sink.pod_uid(ack.pod) if sink is not None else None)
        if not verdict.ok:
            enforced = self.verifier.mode is Mode.REQUIRE
            log.warning(
                "ack %s for event %s, speaking for pod %s/%s, %s: %s: %s",
                ack.id,
                ack.event_id,
                ack.namespace,
                ack.pod,
                "refused" if enforced else "accepted anyway (ackIdentity: warn)",
                verdict.check.value,
                verdict.detail,
            )
            sink = self.rounds.get(ack.event_id)
            if sink is not None:
                sink.refused(ack, verdict, enforced)
            if enforced:
                self._drop(tag, "refused")
                return
        self._route(ack, tag)

    def _route(self, ack: Ack, tag: Tag) -> str:
        sink = self.rounds.get(ack.event_id)
        if sink is not None:
            outcome = sink.fold(ack, tag)
            metrics.ACKS.labels(outcome=outcome).inc()
            if outcome != "folded":
                self.settle([tag])
                if outcome == "not_target":
                    log.warning(
                        "ack from %s/%s, which is not a target of event %s: ignored",
                        ack.namespace,
                        ack.pod,
                        ack.event_id,
                    )
            return outcome
        if ack.event_id in self.finished:
            return self._drop(tag, "late")
        if self._parked_count >= self.max_parked:
            self._drop_oldest_parked()
        self.parked.setdefault(ack.event_id, []).append((ack, tag, time.monotonic()))
        self._parked_count += 1
        return "parked"

    def _drop_oldest_parked(self) -> None:
        # The first key was parked first (dicts keep insertion order), so its first ack
        # has waited longest.
        event_id = next(iter(self.parked))
        waiting = self.parked[event_id]
        old, tag, _ = waiting.pop(0)
        if not waiting:
            del self.parked[event_id]
        self._parked_count -= 1
        log.info("too many acks for unknown events parked: dropping the one for %s from %s/%s",
                 event_id, old.namespace, old.pod)
        self._drop(tag, "unknown_event")

    def _drop(self, tag: Tag, outcome: str) -> str:
        metrics.ACKS.labels(outcome=outcome).inc()
        self.settle([tag])
        return outcome

    def register(self, event_id: str, sink: AckSink) -> None:
        self.rounds[event_id] = sink
        self.finished.pop(event_id, None)
        waiting = self.parked.pop(event_id, [])
        self._parked_count -= len(waiting)
        for ack, tag, _ in waiting:
            self._route(ack, tag)
        self.on_change()

    def unregister(self, event_id: str) -> None:
        if self.rounds.pop(event_id, None) is not None:
            self.finished[event_id] = None
            while len(self.finished) > 10_000:
                self.finished.popitem(last=False)
        self.on_change()

    def expire(self, now: float | None = None) -> int:
        """Drop parked acks older than the grace period; returns how many."""
        now = time.monotonic() if now is None else now
        dropped = 0
        for event_id in list(self.parked):
            keep = []
            for ack, tag, since in self.parked[event_id]:
                if now - since >= self.grace:
                    log.info("dropping ack for unknown event %s from %s/%s", event_id, ack.namespace, ack.pod)
                    self._drop(tag, "unknown_event")
                    self._parked_count -= 1
                    dropped += 1
                else:
                    keep.append((ack, tag, since))
            if keep:
                self.parked[event_id] = keep
            else:
                del self.parked[event_id]
        return dropped
