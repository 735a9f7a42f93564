"""Consuming acks from the operators' shared durable queue and routing them to rounds.

:class:`AckConsumer` is a thread that owns its own pika connection and consumes
``refreshbus.operator.acks`` with manual acknowledgements, only while this replica has
refreshes in flight (a standby replica never takes acks away from the active one). An
AMQP message is acknowledged to the broker only after the status PATCH that contains
it succeeded, so an operator that dies between receiving an ack and writing status gets
the ack redelivered: nothing is lost between the queue and the status.

:class:`AckRouter` runs on the event loop: it decodes each message, hands it to the
round with that event id, and counts and drops the rest: malformed messages, acks for
an event id no round knows (kept for ``grace`` seconds first, since after a restart
acks can arrive before the round is resumed), acks for finished rounds, and acks from
pods that were not targets.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from refreshbus_wire import Ack, ProtocolError, decode
from refreshbus_wire.routing import OPERATOR_ACK_QUEUE

from refreshbus_operator import metrics
from refreshbus_operator.ackidentity import AckVerifier, Mode, Verdict
from refreshbus_operator.broker import LinkThread, backoff, declare_topology

log = logging.getLogger(__name__)

#: (connection generation, delivery tag): delivery tags are only valid on their channel.
Tag = tuple[int, int]


class AckConsumer(LinkThread):
    def __init__(
        self,
        urls: Sequence[str],
        deliver: Callable[[bytes, Tag], None],
        prefetch: int = 1000,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        super().__init__(urls, "consumer", "ack consumer", "refreshbus-acks", log)
        self.deliver = deliver
        self.prefetch = prefetch
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._active = threading.Event()
        self._settle: queue.SimpleQueue[Tag] = queue.SimpleQueue()
        self._generation = 0
        self._lost = False
        #: Called (in the consumer thread) after a *re*connect: messages may have been lost.
        self.on_reconnect: Callable[[], None] = lambda: None

    def _wake(self) -> None:
        self._active.set()

    def set_active(self, active: bool) -> None:
        if active:
            self._active.set()
        else:
            self._active.clear()

    def settle(self, tags: Iterable[Tag]) -> None:
        """Acknowledge messages to the broker (thread-safe; done by the consumer thread)."""
        for tag in tags:
            self._settle.put(tag)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            if not self._active.is_set():
                if self._link.conn is not None:
                    self._drain_settle()
                    self._link.close()
                self._lost = False  # a deliberate close: nothing was lost
                self._active.wait(1.0)
                continue
            try:
                self._ensure()
                self._link.conn.process_data_events(time_limit=0.05)
                self._drain_settle()
                attempt = 0
            except Exception as exc:
                # Only a connection that broke may have lost messages; a failed connect did not.
                self._lost = self._lost or self.connected
                self._link.close()
                delay = backoff(attempt, self.retry_initial, self.retry_max)
                attempt += 1
                log.warning("ack consumer: broker trouble (%s); reconnecting in %.1fs", exc, delay)
                self._stopping.wait(delay)
        self._drain_settle()
        self._link.close()

    def _ensure(self) -> None:
        if self._link.is_open:
            return
        # A link still marked connected but no longer open broke under us (e.g. a broker
        # restart): note it before open() resets the mark, even if this reconnect fails.
        self._lost = self._lost or self._link.connected
        self._link.open(self._prepare)
        if self._lost:
            self._lost = False
            self.on_reconnect()

    def _prepare(self, channel: Any) -> None:
        declare_topology(channel)
        channel.basic_qos(prefetch_count=self.prefetch)
        self._generation += 1
        generation = self._generation

        def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
            self.deliver(body, (generation, method.delivery_tag))

        channel.basic_consume(queue=OPERATOR_ACK_QUEUE, on_message_callback=on_message, auto_ack=False)

    def _drain_settle(self) -> None:
        while True:
            try:
                generation, tag = self._settle.get_nowait()
            except queue.Empty:
                return
            channel = self._link.channel
            if generation == self._generation and channel is not None and channel.is_open:
                try:
                    channel.basic_ack(delivery_tag=tag)
                except Exception as exc:  # redelivered later; rounds dedupe per pod
                    log.debug("could not ack delivery %s: %s", tag, exc)


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
        verdict = await self.verifier.verify(ack)
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
