"""The bus-mode main loop: connect, consume, handle, reconcile -- and stop on SIGTERM.

Two threads (plus the health server's daemon thread), so that a slow API server or a
slow app never stalls the broker connection:

* the **connection thread** (the main thread) owns the pika connection: it connects,
  blocks on the broker socket for at most :data:`TICK` seconds at a time (heartbeats,
  deliveries), decodes each delivery and drops what can never be handled, and hands
  refresh events over to the worker;
* the **worker thread** runs the refresher: syncs (at start-up, after every connect,
  periodically) and events, one at a time in arrival order, and hands each ack back to
  the connection thread, which publishes it and only then acknowledges the delivery.

They share nothing but :class:`~refreshbus_sidecar.handoff.Handoff` (and the probe
state). Every connect is followed by a level-triggered sync, so events missed while
disconnected do not matter.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType

from refreshbus_wire.events import Ack, AckResult, ProtocolError, RefreshEvent, decode, now

from refreshbus_sidecar.bus import BROKER_ERRORS, Backoff, Bus, BusError, Delivery
from refreshbus_sidecar.config import Settings
from refreshbus_sidecar.handoff import Handoff
from refreshbus_sidecar.health import State
from refreshbus_sidecar.metrics import Metrics
from refreshbus_sidecar.refresher import Outcome, Refresher, addressed_to

log = logging.getLogger("refreshbus.sidecar")

#: Longest the connection loop blocks before proving liveness again, seconds.
TICK = 5.0
#: Retry delays after a failed sync: first, and cap (doubling in between).
SYNC_RETRY_INITIAL = 2.0
SYNC_RETRY_MAX = 300.0
#: How long a stopping sidecar waits for the worker to finish what it is doing, seconds.
#: Longer work (a fetch from a slow API server) is abandoned: its delivery is redelivered.
STOP_GRACE = 0.5
#: A job may run this much longer than its worst case before liveness calls the worker stuck.
STUCK_MARGIN = 6 * TICK


class Shutdown(BaseException):
    """Raised by the SIGTERM handler to leave a blocking wait at once."""


@dataclass(frozen=True, slots=True)
class Resync:
    """Work: a level-triggered sync (after a connect, or a re-subscribe)."""

    why: str
    jitter: bool


@dataclass(frozen=True, slots=True)
class Job:
    """Work: one decoded refresh event addressed to this pod."""

    delivery: Delivery
    event: RefreshEvent
    received_at: datetime
    t0: float


#: What the worker is handed (None only wakes it up).
Work = Resync | Job | None


class Service:
    def __init__(self, settings: Settings, refresher: Refresher, bus: Bus, state: State,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.refresher = refresher
        self.bus = bus
        self.state = state
        self.metrics = metrics
        self.stopping = False
        self._stop = threading.Event()
        self._interruptible = False
        self._connects = 0
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self._next_connect = 0.0
        self._handoff: Handoff[Work] = Handoff()
        # Worker-thread state from here on.
        self._sync_backoff = Backoff(SYNC_RETRY_INITIAL, SYNC_RETRY_MAX)
        self._next_sync = 0.0
        self._worker = threading.Thread(target=self._work, name="refresh", daemon=True)
        refresher.sleep = self.worker_sleep
        state.worker_running = self._worker.is_alive

    # -- signals -------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True
        self._stop.set()
        if self._interruptible:
            self._interruptible = False
            raise Shutdown

    def _sleep(self, seconds: float) -> None:
        """Connection thread: a sleep that SIGTERM ends at once."""
        if self.stopping:
            raise Shutdown
        self._interruptible = True
        try:
            time.sleep(max(0.0, seconds))
        finally:
            self._interruptible = False
        if self.stopping:
            raise Shutdown

    def worker_sleep(self, seconds: float) -> None:
        """Worker thread: a sleep (jitter, fetch retry) that stopping ends at once."""
        if self._stop.wait(max(0.0, seconds)):
            raise Shutdown

    # -- connection thread ---------------------------------------------------------------

    def run(self) -> int:
        self._worker.start()
        try:
            while not self.stopping:
                self.state.tick()
                if self.bus.consumer_cancelled:
                    self._resubscribe()
                if not self.bus.connected and time.monotonic() >= self._next_connect:
                    self._connect()
                self._wait()
                self._hand_over()
        except Shutdown:
            pass
        finally:
            self._stop.set()
            self._handoff.submit(None)  # wakes the worker up to see it
            self.bus.close()
            self._worker.join(STOP_GRACE)
            log.info("stopped")
        return 0

    def _wait(self) -> None:
        if self.bus.connected:
            if self.stopping:
                raise Shutdown
            self._interruptible = True
            try:
                self.bus.wait(TICK)  # also runs the acks the worker handed back
            except BROKER_ERRORS as exc:
                self._lost(exc)
            finally:
                self._interruptible = False
            if self.stopping:
                raise Shutdown
        else:
            self._sleep(min(TICK, max(0.0, self._next_connect - time.monotonic())))

    def _connect(self) -> None:
        try:
            self.bus.connect()
        except BusError as exc:
            delay = self._backoff.next()
            self._next_connect = time.monotonic() + delay
            log.warning("broker unreachable, retrying in %.1fs: %s", delay, exc)
            self._set_connected(False)
            return
        self._backoff.reset()
        self._connects += 1
        if self._connects > 1:
            self.metrics.inc("refreshbus_sidecar_reconnects_total")
        self._set_connected(True)
        log.info("connected to %s, consuming %s", self.bus.connected_to, self.bus.queue)
        # Level-triggered: whatever happened while we were away, catch up now (the worker
        # does it before any delivery of this connection).
        first = self._connects == 1
        self._handoff.submit(Resync("connected" if first else "reconnected", jitter=not first))

    def _resubscribe(self) -> None:
        try:
            self.bus.resubscribe()
        except BROKER_ERRORS as exc:
            self._lost(exc)
            return
        # Events routed while the queue was gone are lost: catch up from the API.
        self._handoff.submit(Resync("resubscribed", jitter=False))

    def _lost(self, exc: BaseException) -> None:
        log.warning("broker connection lost: %s: %s", type(exc).__name__, exc)
        self.bus.close()
        self._set_connected(False)
        self._next_connect = time.monotonic() + self._backoff.next()

    def _set_connected(self, value: bool) -> None:
        self.state.connected = value
        self.metrics.set("refreshbus_sidecar_broker_connected", 1 if value else 0)

    def _hand_over(self) -> None:
        while self.bus.pending and not self.stopping:
            delivery = self.bus.pending.popleft()
            received_at, t0 = now(), time.monotonic()
            self.metrics.inc("refreshbus_sidecar_events_received_total")
            try:
                message = decode(delivery.body)
            except ProtocolError as exc:
                self._drop(delivery, "malformed", str(exc))
                continue
            if not isinstance(message, RefreshEvent):
                self._drop(delivery, "not-a-refresh", f"{message.type.value} message on a sidecar queue")
                continue
            if not addressed_to(message, self.refresher.identity):
                self._drop(delivery, "foreign", f"event {message.id} targets {message.target.to_json()}")
                continue
            self._handoff.submit(Job(delivery, message, received_at, t0))

    def _drop(self, delivery: Delivery, reason: str, detail: str) -> None:
        self.metrics.inc("refreshbus_sidecar_events_dropped_total", reason=reason)
        log.warning("dropped a message (%s): %s", reason, detail[:500],
                    extra={"routing_key": delivery.routing_key, "bytes": len(delivery.body)})
        try:
            self.bus.settle(delivery.tag)  # never redeliver what can never be handled
        except BROKER_ERRORS as exc:
            self._lost(exc)

    def _finish(self, delivery: Delivery, ack: Ack) -> None:
        """Connection thread (run by pika inside :meth:`Bus.wait`, which reports a broker
        error): publish the ack, and only once the broker confirmed it, settle the delivery.
        It runs only while the delivery's connection is the open one: the hand-off drops it
        with its connection."""
        self.bus.publish_ack(ack)
        self.bus.settle(delivery.tag)

    # -- worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._busy(functools.partial(self._sync, "start-up"))
            while not self._stop.is_set():
                due = self._next_sync - time.monotonic()
                if due <= 0:
                    self._busy(functools.partial(self._sync, "periodic" if self.refresher.ready else "retry"))
                    continue
                item = self._handoff.take(None if math.isinf(due) else due)
                if self._stop.is_set():
                    return
                if isinstance(item, Resync):
                    self._busy(functools.partial(self._sync, item.why, item.jitter))
                elif isinstance(item, Job):
                    self._busy(functools.partial(self._refresh, item), item.event)
        except Shutdown:
            pass
        except BaseException:
            log.exception("the refresh worker died: liveness fails from now on")
            raise

    def _busy(self, job: Callable[[], None], event: RefreshEvent | None = None) -> None:
        """Run one job, telling liveness how long it may take (its worst case, plus a margin)."""
        self.state.busy_limit = self.refresher.worst_case_seconds(event) + STUCK_MARGIN
        self.state.busy_since = time.monotonic()
        try:
            job()
        finally:
            self.state.busy_since = None

    def _sync(self, why: str, jitter: bool = False) -> None:
        try:
            error = self.refresher.sync(why, jitter=jitter).error
        except Exception as exc:  # a bug must cost a retry later, never the sidecar
            log.exception("sync crashed")
            error = f"internal error in the sidecar: {type(exc).__name__}: {exc}"
        self.state.ready = self.refresher.ready
        if error:
            delay = self._sync_backoff.next()
            self._next_sync = time.monotonic() + delay
            self.state.detail = f"last sync failed ({error}); retrying in {delay:.0f}s"
        else:
            self._sync_backoff.reset()
            interval = self.settings.resync_interval
            self._next_sync = time.monotonic() + interval if interval > 0 else math.inf
            self.state.detail = "config written" if self.refresher.ready else "waiting for config"

    def _refresh(self, job: Job) -> None:
        event = job.event
        try:
            ack = self.refresher.handle(event, job.received_at, job.t0)
        except Exception as exc:  # a bug must cost one failed ack, never the sidecar
            log.exception("refresh crashed", extra={"event_id": event.id})
            self.metrics.inc("refreshbus_sidecar_refreshes_total", result="failed")
            ack = self.refresher.ack(event.id, job.received_at, Outcome(
                AckResult.FAILED, None, error=f"internal error in the sidecar: {type(exc).__name__}: {exc}"))
        if ack.error and self._next_sync > time.monotonic() + SYNC_RETRY_INITIAL:
            self._next_sync = time.monotonic() + self._sync_backoff.next()  # keep converging
        finish = functools.partial(self._finish, job.delivery, ack)
        if not self._handoff.reply(job.delivery.connection, finish):
            # Handled all the same: the redelivery on the next connection is a duplicate,
            # answered with this result at once.
            log.info("the connection this event came on is gone; the broker redelivers it",
                     extra={"event_id": event.id})
