"""The bus-mode main loop: connect, consume, handle, reconcile -- and stop on SIGTERM.

One thread does everything (the health server has its own daemon thread). The loop
blocks on the broker socket, or sleeps while the broker is away, for at most
:data:`TICK` seconds, so liveness is proven without busy wake-ups. Every connect is
followed by a level-triggered sync, so events missed while disconnected do not matter.
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import datetime
from types import FrameType

from refreshbus_wire.events import Ack, AckResult, ProtocolError, RefreshEvent, decode, new_id, now

from refreshbus_sidecar.bus import BROKER_ERRORS, Backoff, Bus, BusError, Delivery
from refreshbus_sidecar.config import Settings
from refreshbus_sidecar.health import State
from refreshbus_sidecar.metrics import Metrics
from refreshbus_sidecar.refresher import Refresher, addressed_to

log = logging.getLogger("refreshbus.sidecar")

#: Longest the loop blocks before proving liveness again, seconds.
TICK = 5.0
#: Retry delays after a failed sync: first, and cap (doubling in between).
SYNC_RETRY_INITIAL = 2.0
SYNC_RETRY_MAX = 300.0


class Shutdown(BaseException):
    """Raised by the SIGTERM handler to leave a blocking wait at once."""


class Service:
    def __init__(self, settings: Settings, refresher: Refresher, bus: Bus, state: State,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.refresher = refresher
        self.bus = bus
        self.state = state
        self.metrics = metrics
        self.stopping = False
        self._interruptible = False
        self._connects = 0
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self._sync_backoff = Backoff(SYNC_RETRY_INITIAL, SYNC_RETRY_MAX)
        self._next_connect = 0.0
        self._next_sync = 0.0

    # -- signals -------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True
        if self._interruptible:
            self._interruptible = False
            raise Shutdown

    def interruptible_sleep(self, seconds: float) -> None:
        """Interruptible sleep: SIGTERM ends it at once."""
        if self.stopping:
            raise Shutdown
        self._interruptible = True
        try:
            time.sleep(max(0.0, seconds))
        finally:
            self._interruptible = False
        if self.stopping:
            raise Shutdown

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._sync("start-up")
            while not self.stopping:
                self.state.tick()
                if not self.bus.connected and time.monotonic() >= self._next_connect:
                    self._connect()
                if time.monotonic() >= self._next_sync:
                    self._sync("periodic" if self.refresher.ready else "retry")
                self._wait()
                self._drain()
        except Shutdown:
            pass
        finally:
            self.bus.close()
            log.info("stopped")
        return 0

    def _wait(self) -> None:
        limit = max(0.0, min(TICK, self._next_sync - time.monotonic()))
        if self.bus.connected:
            if self.stopping:
                raise Shutdown
            self._interruptible = True
            try:
                self.bus.wait(limit)
            except BROKER_ERRORS as exc:
                self._lost(exc)
            finally:
                self._interruptible = False
            if self.stopping:
                raise Shutdown
        else:
            self.interruptible_sleep(min(limit, max(0.0, self._next_connect - time.monotonic())))

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
        # Level-triggered: whatever happened while we were away, catch up now.
        self._sync("connected" if self._connects == 1 else "reconnected", jitter=self._connects > 1)

    def _lost(self, exc: BaseException) -> None:
        log.warning("broker connection lost: %s: %s", type(exc).__name__, exc)
        self.bus.close()
        self._set_connected(False)
        self._next_connect = time.monotonic() + self._backoff.next()

    def _set_connected(self, value: bool) -> None:
        self.state.connected = value
        self.metrics.set("refreshbus_sidecar_broker_connected", 1 if value else 0)

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
            self._next_sync = time.monotonic() + interval if interval > 0 else float("inf")
            self.state.detail = "config written" if self.refresher.ready else "waiting for config"

    # -- deliveries ----------------------------------------------------------------------

    def _drain(self) -> None:
        while self.bus.pending and not self.stopping:
            delivery = self.bus.pending.popleft()
            try:
                self._handle(delivery)
            except BROKER_ERRORS as exc:
                self._lost(exc)  # unacked: the broker redelivers it after the reconnect
                return

    def _handle(self, delivery: Delivery) -> None:
        t0 = time.monotonic()
        received_at = now()
        self.metrics.inc("refreshbus_sidecar_events_received_total")
        try:
            message = decode(delivery.body)
        except ProtocolError as exc:
            self._drop(delivery, "malformed", str(exc))
            return
        if not isinstance(message, RefreshEvent):
            self._drop(delivery, "not-a-refresh", f"{message.type.value} message on a sidecar queue")
            return
        if not addressed_to(message, self.refresher.identity):
            self._drop(delivery, "foreign", f"event {message.id} targets {message.target.to_json()}")
            return
        self._refresh(delivery, message, received_at, t0)

    def _refresh(self, delivery: Delivery, event: RefreshEvent, received_at: datetime, t0: float) -> None:
        try:
            ack = self.refresher.handle(event, received_at, t0)
        except Exception as exc:  # a bug must cost one failed ack, never the sidecar
            log.exception("refresh crashed", extra={"event_id": event.id})
            self.metrics.inc("refreshbus_sidecar_refreshes_total", result="failed")
            ack = Ack(id=new_id(), event_id=event.id, namespace=self.refresher.identity.namespace,
                      pod=self.refresher.identity.pod, result=AckResult.FAILED, received_at=received_at,
                      error=f"internal error in the sidecar: {type(exc).__name__}: {exc}")
        if ack.error and self._next_sync > time.monotonic() + SYNC_RETRY_INITIAL:
            self._next_sync = time.monotonic() + self._sync_backoff.next()  # keep converging
        self.bus.publish_ack(ack)
        self.bus.settle(delivery.tag)

    def _drop(self, delivery: Delivery, reason: str, detail: str) -> None:
        self.metrics.inc("refreshbus_sidecar_events_dropped_total", reason=reason)
        log.warning("dropped a message (%s): %s", reason, detail[:500],
                    extra={"routing_key": delivery.routing_key, "bytes": len(delivery.body)})
        self.bus.settle(delivery.tag)  # never redeliver what can never be handled
