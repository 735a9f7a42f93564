"""The refresh logic, free of any broker code: event -> fetch -> write -> reload -> ack.

Idempotent twice over: an event id already handled successfully is acked again with
the result it got the first time, without touching anything, and content whose hash is
already on disk is neither written nor reloaded. Level-triggered: :meth:`Refresher.sync`
reconciles every managed source with the API at start-up, after every reconnect and
periodically, whether or not an event arrived.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from refreshbus_wire.events import (
    Ack,
    AckResult,
    Action,
    RefreshEvent,
    ReleaseRef,
    Scope,
    Timings,
    new_id,
    now,
)
from refreshbus_wire.hashing import combined_hash
from refreshbus_wire.release import (
    VERSIONED_WORKLOAD_KINDS,
    RecordError,
    ReleaseRecord,
    decode_record,
    record_name,
    source_key,
)
from refreshbus_wire.routing import PodIdentity

from refreshbus_sidecar import reload as reload_mod
from refreshbus_sidecar.config import Settings
from refreshbus_sidecar.delivery import DeliveryError, Payload, Store, payload_from_object
from refreshbus_sidecar.kubeapi import ApiError, ForbiddenError, NotFoundError, ServerError
from refreshbus_sidecar.metrics import Metrics

log = logging.getLogger("refreshbus.sidecar")

_T = TypeVar("_T")

#: File in the shared volume holding the hash of every managed source as the app last
#: loaded it (after a successful reload, or the initial write the app starts with). A
#: restarted sidecar that finds the content on disk ahead of it knows its predecessor
#: died between a swap and the reload, and reloads.
LOADED_MARKER = ".loaded"

#: Delays (seconds) between fetch attempts while handling one event: about 4 s in all,
#: enough for an API server behind the event's resourceVersion, or a missing object or
#: permission, to be reported quickly.
FETCH_RETRY_DELAYS = (0.2, 0.4, 0.8, 1.2, 1.5)
#: After those, while the API server does not answer (transport errors, 5xx, 429), an
#: event's fetch goes on every RETRY_EVERY seconds until the event's deadline, for at most
#: MAX_FETCH_WAIT seconds after it was received: a brownout then ends in an ``ok`` ack.
#: The broker connection does not wait for it (another thread serves it).
RETRY_EVERY = 5.0
MAX_FETCH_WAIT = 300.0
#: The longest HTTP reload an event's action may ask for (the wire protocol's limit), and
#: what the health wait's last poll may add to its timeout, seconds.
MAX_EVENT_RELOAD_TIMEOUT = 60.0
HEALTH_POLL_SLACK = 2.0


class Fetcher(Protocol):
    #: Seconds one request may block (each is tried twice on a broken kept-alive connection).
    timeout: float

    def get(self, kind: str, namespace: str, name: str, *, not_older_than: str | None = None
            ) -> dict[str, Any]: ...


class SyncError(RuntimeError):
    """A fetch, write or reload failed; the text is what goes into a failed ack."""


class _Again(Exception):  # noqa: N818 -- not an error: a request for another attempt
    """One attempt of a GET did not give a usable answer; another one may."""

    def __init__(self, why: str, unanswered: bool = False) -> None:
        super().__init__(why)
        #: The API server did not answer (transport error, 5xx, 429): worth waiting for.
        self.unanswered = unanswered


@dataclass(frozen=True, slots=True)
class Outcome:
    result: AckResult
    config_hash: str | None
    written_ms: float | None = None
    reloaded_ms: float | None = None
    error: str | None = None
    #: Time spent waiting for the API (jitter excluded), for logs and the benchmark.
    fetch_ms: float | None = None
    #: (kind, name) of the sources written.
    changed: tuple[tuple[str, str], ...] = ()
    #: The release-record revision the pod runs now (None: the workload has no record).
    revision: int | None = None


def addressed_to(event: RefreshEvent, me: PodIdentity) -> bool:
    """Whether an event's target names this pod (the broker should never route others here)."""
    t = event.target
    if t.scope is Scope.ALL:
        return True
    if t.namespace != me.namespace:
        return False
    if t.scope is Scope.NAMESPACE:
        return True
    if t.scope is Scope.POD:
        return t.name == me.pod
    return t.name == me.workload_name and (t.kind or "").lower() == me.workload_kind.lower()


def rv_older(got: str | None, want: str | None) -> bool:
    """Whether resourceVersion ``got`` is older than ``want`` (both must be etcd revisions)."""
    if not got or not want or not got.isdigit() or not want.isdigit():
        return False
    return int(got) < int(want)


class Refresher:
    """Applies the managed ConfigMaps/Secrets to the shared volume and reloads the app."""

    def __init__(
        self,
        settings: Settings,
        api: Fetcher,
        store: Store,
        metrics: Metrics,
        *,
        sleep: Callable[[float], None] = time.sleep,
        retry_delays: tuple[float, ...] = FETCH_RETRY_DELAYS,
        max_fetch_wait: float = MAX_FETCH_WAIT,
    ) -> None:
        self.settings = settings
        self.api = api
        self.store = store
        self.metrics = metrics
        self.sleep = sleep
        self.retry_delays = retry_delays
        self.max_fetch_wait = max_fetch_wait
        self.identity = settings.identity
        #: Written to disk but the last reload of it failed: the next sync/event retries it.
        self.reload_pending = False
        self.ready = False
        self._marker_checked = False
        #: event id -> the outcome of the events handled successfully.
        self._done: OrderedDict[str, Outcome] = OrderedDict()
        me = self.identity
        #: The workload's release record (None: a bare Pod/ReplicaSet, never versioned).
        self.record_name = (record_name(me.workload_kind, me.workload_name)
                            if me.workload_kind in VERSIONED_WORKLOAD_KINDS else None)
        self._release_forbidden_logged = False
        #: The last read of the release record found none (404, or not allowed to read it):
        #: events without ``release`` then skip it, see :meth:`_fetch_release`.
        self._record_absent = False
        #: (kind, name) -> when a level-triggered sync wrote the source's current content and
        #: the app reloaded it; an event issued before then was applied by that sync.
        self._caught_up: dict[tuple[str, str], datetime] = {}

    def worst_case_seconds(self, event: RefreshEvent | None) -> float:
        """The longest handling ``event`` (None: a sync) can take while still making progress:
        jitter, every fetch attempt timing out (each request is tried twice), the delays
        between attempts and the time an event keeps retrying, the reload and the health
        wait. Liveness allows this much for one job before it calls the worker stuck."""
        request = 2 * self.api.timeout
        reload = self.settings.reload
        sources = len(self.settings.sources) + (self.record_name is not None)
        if event is None:
            return (self.settings.fetch_jitter + sources * request + reload.timeout
                    + reload.health_timeout + HEALTH_POLL_SLACK)
        fetches = sources * ((len(self.retry_delays) + 1) * request + sum(self.retry_delays))
        asked = event.action.timeout_seconds if event.action and event.action.timeout_seconds else 0.0
        return (self.settings.fetch_jitter + fetches + self._fetch_window(event) + request
                + max(reload.timeout, asked) + reload.health_timeout + HEALTH_POLL_SLACK)

    def _fetch_window(self, event: RefreshEvent) -> float:
        """How long an event's fetch may keep retrying an unanswering API server, seconds."""
        return max(0.0, min(self.max_fetch_wait, (event.deadline - now()).total_seconds()))

    # -- events ------------------------------------------------------------------------

    def handle(self, event: RefreshEvent, received_at: datetime, t0: float) -> Ack:
        """Handle one refresh event addressed to this pod and build its ack.

        Never raises for anything the event, the API, the disk or the app can do.
        """
        extra = {"event_id": event.id}
        if event.id in self._done:
            # The first ack may never have reached the operator (a reconnect between the
            # apply and the ack): repeat it rather than say "unchanged" about our own change.
            log.info("duplicate event: already handled, nothing to do", extra=extra)
            self.metrics.inc("refreshbus_sidecar_duplicate_events_total")
            outcome = self._done[event.id]
        else:
            outcome = self._apply_event(event, t0)
            if outcome.result is AckResult.UNCHANGED and self._caught_up_since(event):
                log.info("already applied by the catch-up sync after this event was issued", extra=extra)
                outcome = dataclasses.replace(outcome, result=AckResult.OK)
            for key in outcome.changed:
                self._caught_up.pop(key, None)
            if outcome.result is not AckResult.FAILED:
                self._remember(event.id, Outcome(outcome.result, outcome.config_hash,
                                                 revision=outcome.revision))
                self._running(outcome.revision)
        self.metrics.inc("refreshbus_sidecar_refreshes_total", result=outcome.result.value)
        level = logging.WARNING if outcome.result is AckResult.FAILED else logging.INFO
        log.log(level, "refresh %s%s", outcome.result.value,
                f": {outcome.error}" if outcome.error else "",
                extra={**extra, "config_hash": outcome.config_hash, "revision": outcome.revision,
                       "fetch_ms": _ms(outcome.fetch_ms),
                       "written_ms": _ms(outcome.written_ms), "reloaded_ms": _ms(outcome.reloaded_ms),
                       "received_at": received_at.isoformat(),
                       # Publish -> received, by the operator's and this node's wall clocks.
                       "delivered_ms": _ms((received_at - event.issued_at).total_seconds() * 1000)})
        return self.ack(event.id, received_at, outcome)

    def ack(self, event_id: str, received_at: datetime, outcome: Outcome) -> Ack:
        """The ack for an event: the only place one is built."""
        return Ack(
            id=new_id(),
            event_id=event_id,
            namespace=self.identity.namespace,
            pod=self.identity.pod,
            result=outcome.result,
            received_at=received_at,
            config_hash=outcome.config_hash,
            timings=Timings(written_ms=outcome.written_ms, reloaded_ms=outcome.reloaded_ms),
            error=outcome.error,
            revision=None if outcome.result is AckResult.FAILED else outcome.revision,
        )

    def _apply_event(self, event: RefreshEvent, t0: float) -> Outcome:
        managed = set(self.settings.sources)
        refs: list[tuple[str, str, str | None]] = []
        for source in event.sources:
            if source.namespace != self.identity.namespace or (source.kind.value, source.name) not in managed:
                return Outcome(AckResult.FAILED, None, error=(
                    f"{source.ref} is not managed by this pod's sidecar (it manages "
                    f"{', '.join(f'{k}/{n}' for k, n in self.settings.sources)})"))
            refs.append((source.kind.value, source.name, source.resource_version))
        if self.settings.fetch_jitter > 0:
            self.sleep(random.uniform(0, self.settings.fetch_jitter))
        fetch_started = time.monotonic()
        until = fetch_started + self._fetch_window(event)
        try:
            revision, payloads = self._resolve(refs, event.release, until, sync=False)
        except SyncError as exc:
            return Outcome(AckResult.FAILED, self._hash_on_disk(refs), error=str(exc))
        fetch_ms = (time.monotonic() - fetch_started) * 1000
        if (any(s.keys is not None for s in event.sources) and not self.reload_pending
                and all(self._is_current(p, s.keys) for p, s in zip(payloads, event.sources, strict=True))):
            # Protocol 1.1 sources[].keys: only a change in the named keys counts.
            return Outcome(AckResult.UNCHANGED, self._hash_on_disk(refs), fetch_ms=fetch_ms,
                           revision=revision)
        outcome = self._write_and_reload(payloads, self._action_for(event.action), t0, reload=True)
        return dataclasses.replace(outcome, fetch_ms=fetch_ms, revision=revision)

    def _is_current(self, payload: Payload, keys: tuple[str, ...] | None) -> bool:
        """Whether what is applied already matches ``payload`` in ``keys`` (None: every key)."""
        if keys is None:
            return self.store.current_hash(payload.kind, payload.name) == payload.hash
        if self.store.current_hash(payload.kind, payload.name) is None:
            return False  # nothing applied yet
        return all(payload.files.get(key) == self.store.current_value(payload.kind, payload.name, key)
                   for key in keys)

    def _caught_up_since(self, event: RefreshEvent) -> bool:
        """Whether a sync wrote (and the app reloaded) the current content of one of the
        event's sources after the event was issued: that apply was this event's change."""
        return any(
            (at := self._caught_up.get((s.kind.value, s.name))) is not None and at >= event.issued_at
            for s in event.sources)

    def _running(self, revision: int | None) -> None:
        self.metrics.set("refreshbus_sidecar_release_revision", revision or 0)

    def _remember(self, event_id: str, outcome: Outcome) -> None:
        self._done[event_id] = outcome
        while len(self._done) > 1024:
            self._done.popitem(last=False)

    # -- level-triggered sync -----------------------------------------------------------

    def sync(self, why: str, *, jitter: bool = False) -> Outcome:
        """Bring every managed source up to date with the API, reloading if anything changed.

        At the very first sync, sources that were not on disk at all are written without
        a reload (the app has not read them yet). With ``jitter`` (after a reconnect, when
        every sidecar on the bus reconnects at about the same time) it first waits up to
        the fetch jitter. Raises nothing; see the outcome.
        """
        if jitter and self.settings.fetch_jitter > 0:
            self.sleep(random.uniform(0, self.settings.fetch_jitter))
        t0 = time.monotonic()
        first_time = any(self.store.current_hash(k, n) is None for k, n in self.settings.sources)
        if not first_time and not self._marker_checked:
            self._check_marker()
        try:
            revision, payloads = self._resolve([(k, n, None) for k, n in self.settings.sources], None, None,
                                               sync=True)
        except SyncError as exc:
            self.metrics.inc("refreshbus_sidecar_sync_errors_total")
            log.warning("sync (%s) failed: %s", why, exc)
            return Outcome(AckResult.FAILED, None, error=str(exc))
        outcome = self._write_and_reload(payloads, self._action_for(None), t0, reload=not first_time)
        outcome = dataclasses.replace(outcome, revision=revision)
        if outcome.result is not AckResult.FAILED:
            self._running(revision)
        if outcome.result is not AckResult.FAILED or outcome.written_ms is not None:
            if not self.ready:
                log.info("initial config written", extra={"config_hash": outcome.config_hash})
            self.ready = True
            self.metrics.set("refreshbus_sidecar_ready", 1)
        if outcome.result is AckResult.OK and outcome.reloaded_ms is not None:
            applied_at = now()
            for key in outcome.changed:
                self._caught_up[key] = applied_at
        if outcome.result is AckResult.OK:
            log.info("sync (%s) applied a change", why, extra={"config_hash": outcome.config_hash})
        return outcome

    # -- steps ---------------------------------------------------------------------------

    def _resolve(self, refs: list[tuple[str, str, str | None]], want: ReleaseRef | None, until: float | None,
                 *, sync: bool) -> tuple[int | None, list[Payload]]:
        """The content to apply for ``refs`` (kind, name, resourceVersion): a source the
        release record's revision for this pod names comes from the record, any other one
        from the API. Returns that revision's number (None: no record) and the payloads."""
        record = self._fetch_release(want, until, sync=sync)
        if record is None:
            return None, [self._fetch(kind, name, rv, until) for kind, name, rv in refs]
        revision = record.release.revision_for(self.identity.pod)
        files = record.files(revision)
        payloads = []
        for kind, name, rv in refs:
            pinned = files.get(source_key(kind, name))
            payloads.append(self._fetch(kind, name, rv, until) if pinned is None
                            else Payload(kind, name, pinned, self.settings.configmap_mode))
        return revision.revision, payloads

    def _fetch_release(self, want: ReleaseRef | None, until: float | None, *, sync: bool
                       ) -> ReleaseRecord | None:
        """The workload's release record; None: it has none (the sources are followed live).

        ``want`` (from an event): the record must be at that revision or later, and must be
        readable; it is retried like a source. Without it a record the sidecar may not read
        counts as none, with a warning: the operator grants the read with the sidecar's Role,
        and a missing grant must not stop the pod's config from being refreshed.

        A sync always reads the record; an event without ``want`` only when the last read
        found one, so an unversioned pod's refresh costs no GET beyond its sources'. That
        misses no record: the operator names the release in every event bringing a versioned
        workload ConfigMaps (rollout steps and rollbacks; plain rounds, after accept_live), and
        a workload becomes versioned by a change of its pod template -- new pods, whose
        start-up sync reads the record."""
        name = self.record_name
        if want is not None and want.name != name:
            raise SyncError(f"the event names release record {want.name}, but this pod's workload "
                            f"{self.identity.workload_kind}/{self.identity.workload_name} has "
                            f"{name or 'none (not a Deployment, StatefulSet or DaemonSet)'}")
        if name is None or (want is None and not sync and self._record_absent):
            return None

        def attempt() -> ReleaseRecord | None:
            try:
                obj = self.api.get("ConfigMap", self.identity.namespace, name)
            except NotFoundError as exc:
                self._record_absent = True
                if want is None:
                    return None
                raise _Again(f"release record {exc}") from None
            except ForbiddenError as exc:
                self._record_absent = True
                if want is None:
                    if not self._release_forbidden_logged:
                        log.warning("cannot read the release record, following the live sources: %s", exc)
                        self._release_forbidden_logged = True
                    return None
                raise _Again(str(exc)) from None
            except ApiError as exc:
                raise _Again(str(exc), unanswered=isinstance(exc, ServerError)) from None
            self._release_forbidden_logged = False
            self._record_absent = False
            try:
                record = decode_record(obj)
            except RecordError as exc:
                raise SyncError(f"unusable release record, keeping the current config: {exc}") from None
            if want is not None and record.release.latest_revision < want.revision:
                raise _Again(f"release record {name}: the API server still has revision "
                             f"{record.release.latest_revision}, the event expects {want.revision}")
            return record

        return self._retrying(until, attempt)

    def _fetch(self, kind: str, name: str, want_rv: str | None, until: float | None = None) -> Payload:
        """GET one source (retried as :meth:`_retrying` says)."""
        mode = self.settings.secret_mode if kind == "Secret" else self.settings.configmap_mode
        # An event's version (an etcd revision) lets the API server answer from its cache;
        # a level-triggered sync (no version) reads the truth.
        at_least = want_rv if want_rv is not None and want_rv.isdigit() else None

        def attempt() -> Payload:
            try:
                obj = self.api.get(kind, self.identity.namespace, name, not_older_than=at_least)
            except ApiError as exc:
                raise _Again(str(exc), unanswered=isinstance(exc, ServerError)) from None
            got_rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv_older(got_rv, want_rv):
                raise _Again(f"{kind} {name}: API server still has resourceVersion {got_rv}, "
                             f"the event expects {want_rv}")
            try:
                return payload_from_object(obj, kind, mode)
            except DeliveryError as exc:
                raise SyncError(str(exc)) from None

        return self._retrying(until, attempt)

    def _retrying(self, until: float | None, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` until it answers. ``until`` (monotonic; None: one attempt, the
        caller retries later): retry on :data:`FETCH_RETRY_DELAYS`, then, while the API
        server does not answer, every :data:`RETRY_EVERY` seconds until ``until``.

        Raises:
            SyncError: the last attempt's reason, or what ``attempt`` raised itself.
        """
        delays = iter(() if until is None else self.retry_delays)
        last = ""
        unanswered = False
        for n in itertools.count():
            if n:
                delay = next(delays, None)
                if delay is None:
                    if until is None or not unanswered or time.monotonic() + RETRY_EVERY > until:
                        break
                    delay = RETRY_EVERY
                self.sleep(delay)
            try:
                return attempt()
            except _Again as again:
                last, unanswered = str(again), again.unanswered
        raise SyncError(last)

    def _write_and_reload(self, payloads: list[Payload], action: reload_mod.ReloadAction, t0: float,
                          reload: bool) -> Outcome:
        config_hash = combined_hash(p.hash for p in payloads)
        try:
            changed = self.store.apply(payloads)
        except DeliveryError as exc:
            self.metrics.inc("refreshbus_sidecar_sync_errors_total")
            return Outcome(AckResult.FAILED, self._hash_on_disk([(p.kind, p.name, None) for p in payloads]),
                           error=str(exc))
        written = time.monotonic()
        written_ms = (written - t0) * 1000
        if not changed and not self.reload_pending:
            return Outcome(AckResult.UNCHANGED, config_hash)
        error: str | None = None
        reloaded_ms: float | None = None
        if reload:  # on the hot path nothing but the reload itself: logging and pruning come after
            try:
                done = reload_mod.run(action)
                reloaded_ms = (time.monotonic() - t0) * 1000
            except reload_mod.ReloadError as exc:
                error = f"config written, but the reload failed: {exc}"
            self.metrics.observe_reload(time.monotonic() - written)
        if changed:
            log.info("wrote %s", ", ".join(f"{p.kind}/{p.name}" for p in changed),
                     extra={"config_hash": config_hash})
        self.store.prune()
        keys = tuple((p.kind, p.name) for p in changed)
        if not reload:
            self._write_marker()  # the app starts with this content
            return Outcome(AckResult.OK, config_hash, written_ms=written_ms, changed=keys)
        if error is not None:
            self.reload_pending = True
            self.metrics.inc("refreshbus_sidecar_reloads_total", result="failure")
            return Outcome(AckResult.FAILED, config_hash, written_ms=written_ms, error=error, changed=keys)
        self.reload_pending = False
        self._write_marker()
        self.metrics.inc("refreshbus_sidecar_reloads_total", result="success")
        log.info("reloaded: %s", done)
        return Outcome(AckResult.OK, config_hash, written_ms=written_ms, reloaded_ms=reloaded_ms,
                       changed=keys)

    def _all_on_disk(self) -> str | None:
        return self._hash_on_disk([(kind, name, None) for kind, name in self.settings.sources])

    def _check_marker(self) -> None:
        """Once per process: content on disk newer than what the app last loaded means the
        previous sidecar died between a swap and the reload -- reload at this sync."""
        self._marker_checked = True
        try:
            loaded = (self.settings.target_dir / LOADED_MARKER).read_text().strip()
        except OSError:
            return  # no marker (written by an older sidecar, or never): nothing to go by
        if loaded != self._all_on_disk():
            log.warning("the config on disk is newer than what the app last loaded (the previous "
                        "sidecar stopped between writing and reloading): reloading")
            self.reload_pending = True

    def _write_marker(self) -> None:
        self._marker_checked = True
        value = self._all_on_disk()
        if value is None:
            return
        path = self.settings.target_dir / LOADED_MARKER
        tmp = self.settings.target_dir / (LOADED_MARKER + ".tmp")
        try:
            tmp.write_text(value + "\n")
            tmp.replace(path)
        except OSError as exc:  # best effort: only a restart's reload decision depends on it
            log.debug("cannot record the loaded config: %s", exc)

    def _hash_on_disk(self, refs: list[tuple[str, str, str | None]]) -> str | None:
        hashes = [self.store.current_hash(kind, name) for kind, name, _ in refs]
        return None if any(h is None for h in hashes) else combined_hash(h for h in hashes if h)

    def _action_for(self, override: Action | None) -> reload_mod.ReloadAction:
        pod = self.settings.reload
        base = reload_mod.ReloadAction(
            type=pod.type, signal=pod.signal, process=pod.process, url=pod.url, method=pod.method,
            timeout=pod.timeout, health_url=pod.health_url, health_timeout=pod.health_timeout)
        if override is None:
            return base
        if override.type == "none":
            return reload_mod.ReloadAction(type="none", health_url=pod.health_url,
                                           health_timeout=pod.health_timeout)
        if override.type == "signal":
            return reload_mod.ReloadAction(
                type="signal", signal=override.signal or pod.signal, process=pod.process,
                health_url=pod.health_url, health_timeout=pod.health_timeout)
        return reload_mod.ReloadAction(
            type="http", url=f"http://127.0.0.1:{override.port}{override.path}",
            method=override.method or pod.method, timeout=override.timeout_seconds or pod.timeout,
            health_url=pod.health_url, health_timeout=pod.health_timeout)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
