"""One ConfigRefresh round, from resolution to a final phase, and the engine that runs them.

A round: resolve targets -> check sources -> persist the round (annotation) and
``Pending`` -> publish (confirmed) -> ``InProgress`` -> fold acks (batched status
PATCHes) -> final phase when every target answered, or ``TimedOut`` at the deadline.

Restart safety: the round's event id, targets and source versions are written to the
annotation ``refreshbus.io/round`` before anything is published, and per-pod results
go to status (plus, when status had to truncate them, into the annotation). A restarted
operator rebuilds the round from both, waits ``resume_grace`` for acks that queued up
while it was away, then re-publishes the same event id to the targets that have not
answered, and only to them.

Rounds run as our own asyncio tasks (kopf handlers only start them), so a long refresh
never holds a kopf worker, and acks arrive from the consumer thread through the loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from refreshbus_wire import (
    Ack,
    Action,
    RefreshEvent,
    RefreshRef,
    Scope,
    Source,
    SourceKind,
    Target,
    encode,
    new_id,
    now,
)
from refreshbus_wire.routing import pod_key

from refreshbus_operator import metrics
from refreshbus_operator import status as st
from refreshbus_operator import targets as tg
from refreshbus_operator.acks import AckConsumer, AckRouter, Tag
from refreshbus_operator.events import Recorder
from refreshbus_operator.kube import ApiError, Kube, cfr_path, source_path
from refreshbus_operator.publishing import Publisher, PublishError
from refreshbus_operator.settings import ROUND_ANNOTATION, Config

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 60


# -- spec helpers (pure) -----------------------------------------------------------------


def spec_source_entries(spec: Mapping[str, Any]) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """``spec.sources`` as (kind, name, keys); keys ``None`` when the entry names none (every key)."""
    out: list[tuple[str, str, tuple[str, ...] | None]] = []
    for entry in spec.get("sources") or ():
        for field, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            if field in entry:
                ref = entry[field]
                keys = ref.get("keys")
                out.append((kind, ref["name"], tuple(keys) if keys else None))
                break
    return out


def spec_sources(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(kind, name) for kind, name, _keys in spec_source_entries(spec)]


def spec_action(spec: Mapping[str, Any]) -> Action | None:
    action = spec.get("action")
    if not action:
        return None
    if "signal" in action:
        return Action(type="signal", signal=(action["signal"] or {}).get("name", "SIGHUP"))
    if "http" in action:
        http = action["http"]
        return Action(
            type="http",
            method=http.get("method", "POST"),
            port=int(http["port"]),
            path=http["path"],
            timeout_seconds=http.get("timeoutSeconds", 5),
        )
    return Action(type="none")


def encode_round(data: Mapping[str, Any]) -> str:
    return base64.b64encode(zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 9)).decode()


def decode_round(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        data = json.loads(zlib.decompress(base64.b64decode(value)))
    except (ValueError, zlib.error):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str | None


class Round:
    """One refresh round of one ConfigRefresh generation."""

    def __init__(
        self,
        engine: Engine,
        ref: ObjectRef,
        generation: int,
        spec: Mapping[str, Any],
        snapshot: st.Snapshot,
        previous_conditions: list[dict[str, Any]] | None = None,
        resumed: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.ref = ref
        self.generation = generation
        self.spec = spec
        self.snapshot = snapshot
        self.previous_conditions = previous_conditions
        self.resumed = resumed  # the decoded round annotation when resuming
        self.deadline_seconds = int(spec.get("deadlineSeconds") or DEFAULT_DEADLINE)
        self.dirty = asyncio.Event()
        self.answered = asyncio.Event()
        self.unsettled: list[Tag] = []
        self.published_at: datetime = snapshot.start_time
        self.sources: list[Source] = []
        self.final = False
        self.task: asyncio.Task[None] | None = None
        self._closing = False
        self._annotated_acks = 0
        self.routing_keys: tuple[str, ...] = ()
        self._nudging = False
        self._closed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def event_id(self) -> str:
        assert self.snapshot.event_id is not None
        return self.snapshot.event_id

    @property
    def deadline(self) -> datetime:
        return self.snapshot.start_time + timedelta(seconds=self.deadline_seconds)

    def __repr__(self) -> str:
        ref = f"{self.ref.namespace}/{self.ref.name}"
        return f"<Round {ref} gen={self.generation} event={self.snapshot.event_id}>"

    # -- acks --------------------------------------------------------------------------

    def fold(self, ack: Ack, tag: Tag) -> str:
        if ack.namespace != self.ref.namespace or ack.pod not in self.snapshot.targets:
            return "not_target"
        if self.final:
            return "late"
        if ack.pod in self.snapshot.results:
            return "duplicate"
        at = now()
        outcome = st.Outcome(ack.result.value)
        self.snapshot.results[ack.pod] = st.PodResult(
            pod=ack.pod,
            outcome=outcome,
            at=at,
            reason=ack.error,
            config_hash=ack.config_hash,
            latency_ms=int((at - self.published_at).total_seconds() * 1000),
        )
        metrics.POD_RESULTS.labels(result=outcome.value).inc()
        metrics.ACK_LATENCY.observe(max(0.0, (at - self.published_at).total_seconds()))
        self.unsettled.append(tag)
        if not st.pending_pods(self.snapshot):
            self.answered.set()
        self.dirty.set()
        return "folded"

    def broker_trouble(self, reason: str) -> None:
        self.snapshot.conditions["Published"] = st.Condition(
            "Published", "False", "BrokerUnavailable", f"retrying with backoff: {reason}"
        )
        self.dirty.set()

    # -- the round -----------------------------------------------------------------------

    async def run(self) -> None:
        engine = self.engine
        try:
            if self.resumed is None:
                if not await self._prepare():
                    return
            else:
                self._load_sources(self.resumed.get("sources") or [])
            engine.router.register(self.event_id, self)
            flusher = asyncio.create_task(self._flusher(), name=f"flush {self.ref.name}")
            try:
                await self._publish()
                remaining = (self.deadline - now()).total_seconds()
                if st.pending_pods(self.snapshot) and remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.answered.wait(), timeout=remaining)
            finally:
                self._closing = True
                self._closed.set()
                self.dirty.set()
                await flusher
            if st.pending_pods(self.snapshot):
                silent = st.time_out(self.snapshot, now(), self.deadline_seconds)
                log.info("%r timed out; silent pods: %s", self, ", ".join(silent[:20]))
            await self._finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%r failed unexpectedly", self)
            self.snapshot.aborted = f"internal error in the operator: {exc}"
            with contextlib.suppress(Exception):
                await self._finish()
        finally:
            for task in list(self._background):
                task.cancel()
            engine.router.unregister(self.snapshot.event_id or "")
            engine.consumer.settle(self.unsettled)
            self.unsettled = []
            engine.round_ended(self)

    async def _prepare(self) -> bool:
        """Resolve, validate, persist and write Pending. False when the round ended here."""
        engine, ns = self.engine, self.ref.namespace
        snap = self.snapshot
        try:
            resolution = await asyncio.to_thread(tg.fetch_and_resolve, engine.kube, ns, self.spec["target"])
        except tg.TargetError as exc:
            snap.conditions["TargetsResolved"] = st.Condition(
                "TargetsResolved", "False", exc.reason, exc.message
            )
            return await self._abort(exc.message, "TargetsNotResolved")
        snap.targets = resolution.names
        snap.skipped = resolution.skipped
        if not resolution.targets:
            text = "no running, opted-in pod matched the target"
            if resolution.skipped:
                text += f" ({len(resolution.skipped)} matching pod(s) skipped, e.g. "
                text += f"{resolution.skipped[0][0]}: {resolution.skipped[0][1]})"
            snap.conditions["TargetsResolved"] = st.Condition("TargetsResolved", "False", "NoTargets", text)
            return await self._abort(text, "NoTargets")
        snap.conditions["TargetsResolved"] = st.Condition(
            "TargetsResolved",
            "True",
            "Resolved",
            f"{len(resolution.targets)} target pod(s), {len(resolution.skipped)} skipped",
        )
        # Sources: they must exist (metadata only: Secret data is never read) and be managed.
        entries = spec_source_entries(self.spec)
        wanted = [(kind, name) for kind, name, _keys in entries]
        for kind, name, keys in entries:
            try:
                meta = (await engine.kube.aget_metadata(source_path(ns, kind, name))).get("metadata") or {}
            except ApiError as exc:
                if not exc.not_found:
                    raise
                text = f"{kind} {name!r} not found in namespace {ns}"
                snap.conditions["SourcesReady"] = st.Condition(
                    "SourcesReady", "False", "SourceNotFound", text
                )
                return await self._abort(text, "SourceNotFound")
            self.sources.append(
                Source(
                    kind=SourceKind(kind),
                    name=name,
                    namespace=ns,
                    resource_version=meta.get("resourceVersion"),
                    keys=keys,
                )
            )
        problems = tg.unmanaged_sources(wanted, resolution.targets)
        if problems:
            text = "; ".join(problems)
            snap.conditions["SourcesReady"] = st.Condition("SourcesReady", "False", "SourceNotManaged", text)
            return await self._abort(text, "SourceNotManaged")
        snap.conditions["SourcesReady"] = st.Condition(
            "SourcesReady", "True", "SourcesFound", ", ".join(f"{k} {n}" for k, n in wanted)
        )
        snap.conditions["Published"] = st.Condition(
            "Published", "Unknown", "Publishing", "publishing the event"
        )
        self.routing_keys = resolution.routing_keys
        await engine.write_annotation(self, self._round_record())
        await self._write_status()
        await engine.recorder.normal(
            ns,
            self.ref.name,
            self.ref.uid,
            "Started",
            f"refresh {self.event_id} of {', '.join(f'{k}/{n}' for k, n in wanted)} to "
            f"{len(resolution.targets)} pod(s) ({len(resolution.skipped)} skipped)",
        )
        return True

    def _round_record(self, acked: Mapping[str, str] | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "eventId": self.event_id,
            "generation": self.generation,
            "targets": sorted(self.snapshot.targets),
            # [kind, name, resourceVersion] plus the keys when the spec restricts them.
            "sources": [
                [s.kind.value, s.name, s.resource_version, *([list(s.keys)] if s.keys else [])]
                for s in self.sources
            ],
        }
        if acked:
            record["acked"] = dict(acked)
        return record

    def _load_sources(self, raw: list[Any]) -> None:
        for kind, name, rv, *rest in raw:
            keys = tuple(rest[0]) if rest and rest[0] else None
            self.sources.append(
                Source(
                    kind=SourceKind(kind),
                    name=name,
                    namespace=self.ref.namespace,
                    resource_version=rv,
                    keys=keys,
                )
            )

    async def _abort(self, text: str, reason: str) -> bool:
        self.snapshot.aborted = text
        await self.engine.recorder.warning(self.ref.namespace, self.ref.name, self.ref.uid, reason, text)
        await self._finish(post_event=False)
        return False

    def _messages(self, pods: list[str] | None) -> list[tuple[str, bytes]]:
        """Encoded messages: for ``pods`` (resume) one per pod, else per the resolved keys."""
        ns = self.ref.namespace
        addressed: list[tuple[str, Target]]
        if pods is None and self.routing_keys and self.routing_keys[0].startswith("refresh.workload."):
            workload = self.spec["target"]["workload"]
            addressed = [
                (
                    self.routing_keys[0],
                    Target(scope=Scope.WORKLOAD, namespace=ns, kind=workload["kind"], name=workload["name"]),
                )
            ]
        else:
            names = pods if pods is not None else sorted(self.snapshot.targets)
            addressed = [(pod_key(ns, p), Target(scope=Scope.POD, namespace=ns, name=p)) for p in names]
        issued = now()
        action = spec_action(self.spec)
        refresh = RefreshRef(namespace=ns, name=self.ref.name, generation=self.generation)
        origin = f"refreshbus-operator/{self.engine.config.instance}"
        return [
            (
                key,
                encode(
                    RefreshEvent(
                        id=self.event_id,
                        origin=origin,
                        target=target,
                        sources=tuple(self.sources),
                        issued_at=issued,
                        deadline=self.deadline,
                        action=action,
                        refresh=refresh,
                    )
                ),
            )
            for key, target in addressed
        ]

    async def _publish(self) -> None:
        engine = self.engine
        pods: list[str] | None = None
        if self.resumed is not None:
            # Acks sent while we were away are still in the durable queue: let them in first.
            grace = min(engine.config.resume_grace, max(0.0, (self.deadline - now()).total_seconds()))
            if grace > 0 and st.pending_pods(self.snapshot):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.answered.wait(), timeout=grace)
            pods = st.pending_pods(self.snapshot)
            if not pods:
                return
            log.info("%r resumed: re-publishing to %d pod(s) that have not answered", self, len(pods))
        remaining = (self.deadline - now()).total_seconds()
        if remaining <= 0:
            return
        loop = asyncio.get_running_loop()
        messages = self._messages(pods)
        try:
            await engine.publisher.publish(
                messages,
                timeout=remaining,
                on_retry=lambda reason: self._call_soon(loop, reason),
            )
        except PublishError as exc:
            self.snapshot.conditions["Published"] = st.Condition(
                "Published", "False", "BrokerUnavailable", str(exc)
            )
            await self.engine.recorder.warning(
                self.ref.namespace, self.ref.name, self.ref.uid, "BrokerUnavailable", str(exc)
            )
            return
        if self.resumed is None:
            self.published_at = now()
        self.snapshot.conditions["Published"] = st.Condition(
            "Published",
            "True",
            "Published",
            f"event {self.event_id} confirmed by the broker ({len(messages)} message(s))",
        )
        self.dirty.set()

    def nudge(self) -> None:
        """Re-publish the event to the targets that have not answered (once at a time)."""
        published = self.snapshot.conditions.get("Published")
        if self.final or self._nudging or published is None or published.status != "True":
            return
        if not st.pending_pods(self.snapshot):
            return
        self._nudging = True
        task = asyncio.create_task(self._republish(), name=f"nudge {self.ref.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _republish(self) -> None:
        try:
            pods = st.pending_pods(self.snapshot)
            remaining = (self.deadline - now()).total_seconds()
            if pods and remaining > 0:
                log.info("%r: broker reconnected, re-publishing to %d pod(s) that have not answered",
                         self, len(pods))
                await self.engine.publisher.publish(self._messages(pods), timeout=remaining)
        except Exception as exc:
            log.warning("%r: re-publishing failed: %s", self, exc)
        finally:
            self._nudging = False

    def _call_soon(self, loop: asyncio.AbstractEventLoop, reason: str) -> None:
        loop.call_soon_threadsafe(self.broker_trouble, reason)

    # -- status --------------------------------------------------------------------------

    async def _flusher(self) -> None:
        interval = self.engine.config.status_flush_interval
        failures = 0
        while True:
            await self.dirty.wait()
            if self._closing:
                return
            self.dirty.clear()
            try:
                await self._write_status()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("%r: status write failed (%s); retrying", self, exc)
                self.dirty.set()
                await asyncio.sleep(min(5.0, interval * 2**failures))
                continue
            if interval > 0:
                # Rate limit, but wake at once when the round closes (its final write follows).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout=interval)

    async def _write_status(self) -> None:
        tags, self.unsettled = self.unsettled, []
        body = st.render(self.snapshot, now(), self.previous_conditions)
        try:
            await self.engine.write_status(self, body)
        except BaseException:
            self.unsettled = tags + self.unsettled
            raise
        self.previous_conditions = body["conditions"]
        # Only now that status holds these acks may the broker forget them.
        self.engine.consumer.settle(tags)
        await self._maybe_annotate_acks()

    async def _maybe_annotate_acks(self) -> None:
        """Results truncated out of status are kept in the round annotation (for resume)."""
        if len(self.snapshot.results) <= st.MAX_RESULTS or len(self.snapshot.results) == self._annotated_acks:
            return
        acked = {p: r.outcome.value[0] for p, r in self.snapshot.results.items() if r.outcome.success}
        await self.engine.write_annotation(self, self._round_record(acked))
        self._annotated_acks = len(self.snapshot.results)

    async def _finish(self, post_event: bool = True) -> None:
        self.final = True
        self.snapshot.completion_time = now()
        body = st.render(self.snapshot, self.snapshot.completion_time, self.previous_conditions)
        for attempt in range(6):
            try:
                await self.engine.write_status(self, body)
                break
            except ApiError as exc:
                if exc.not_found:
                    return
                log.warning("%r: final status write failed (%s)", self, exc)
            except Exception as exc:
                log.warning("%r: final status write failed (%s)", self, exc)
            await asyncio.sleep(0.2 * 2**attempt)
        self.engine.consumer.settle(self.unsettled)
        self.unsettled = []
        phase = body["phase"]
        metrics.REFRESHES.labels(result=phase).inc()
        metrics.REFRESH_LATENCY.observe(
            max(0.0, (self.snapshot.completion_time - self.snapshot.start_time).total_seconds())
        )
        for result in self.snapshot.results.values():
            if result.outcome is st.Outcome.TIMEOUT:
                metrics.POD_RESULTS.labels(result="timeout").inc()
        log.info("%r finished: %s (%s)", self, phase, body["message"])
        if post_event:
            rec = self.engine.recorder
            if phase == st.Phase.SUCCEEDED:
                await rec.normal(self.ref.namespace, self.ref.name, self.ref.uid, phase, body["message"])
            else:
                await rec.warning(self.ref.namespace, self.ref.name, self.ref.uid, phase, body["message"])


class Engine:
    """Owns the broker threads and every round of this replica."""

    def __init__(self, config: Config, kube: Kube, publisher: Publisher | None = None) -> None:
        self.config = config
        self.kube = kube
        self.publisher = publisher or Publisher(
            config.broker_urls, config.publish_retry_initial, config.publish_retry_max
        )
        self.recorder = Recorder(kube, config.instance)
        self.rounds: dict[tuple[str, str], Round] = {}
        self._writes: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.router = AckRouter(
            settle=lambda tags: self.consumer.settle(tags), grace=config.unknown_ack_grace
        )
        self.consumer = AckConsumer(
            config.broker_urls,
            deliver=self._deliver_threadsafe,
            prefetch=config.ack_prefetch,
            retry_initial=config.publish_retry_initial,
            retry_max=config.publish_retry_max,
        )
        self.router.on_change = lambda: self.consumer.set_active(bool(self.router.rounds))
        self.consumer.on_reconnect = self._reconnected_threadsafe
        self._janitor: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.publisher.start()
        self.consumer.start()
        self._janitor = asyncio.create_task(self._expire_parked(), name="refreshbus-ack-janitor")

    async def stop(self) -> None:
        """Stop without finishing rounds: their status stays InProgress and a restarted
        operator resumes them."""
        tasks = [r.task for r in self.rounds.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        if self._janitor is not None:
            self._janitor.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.consumer.stop)
        await asyncio.to_thread(self.publisher.stop)

    def _deliver_threadsafe(self, body: bytes, tag: Tag) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.router.handle, body, tag)

    def _reconnected_threadsafe(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._reconnected)

    def _reconnected(self) -> None:
        """The broker connection was lost and is back: events or acks may have been lost
        with it (a restarted broker, a dropped connection). Nudge every pod that has not
        answered yet, with the same event id (idempotent for the sidecars)."""
        for round_ in list(self.rounds.values()):
            round_.nudge()

    async def _expire_parked(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.router.expire()

    # -- kopf entry points -----------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any]) -> str:
        """Start, resume or leave alone the round of one ConfigRefresh. Returns what it did."""
        meta = body.get("metadata") or {}
        ns, name = meta["namespace"], meta["name"]
        uid = meta.get("uid")
        generation = int(meta.get("generation") or 1)
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        key = (ns, name)
        existing = self.rounds.get(key)
        if existing is not None:
            if existing.ref.uid == uid and existing.generation == generation:
                return "running"
            log.info("%r superseded (generation %s)", existing, generation)
            if existing.task is not None:
                existing.task.cancel()
            self.rounds.pop(key, None)
        if meta.get("deletionTimestamp"):
            return "deleting"
        ref = ObjectRef(ns, name, uid)
        phase = status.get("phase")
        same_generation = status.get("observedGeneration") == generation
        if same_generation and phase in {p.value for p in st.FINAL_PHASES}:
            return "done"
        record = decode_round((meta.get("annotations") or {}).get(ROUND_ANNOTATION))
        if (
            same_generation
            and phase in (st.Phase.PENDING.value, st.Phase.IN_PROGRESS.value)
            and status.get("eventId")
            and record is not None
            and record.get("eventId") == status["eventId"]
            and record.get("generation") == generation
        ):
            round_ = self._resumed_round(ref, generation, spec, status, record)
            self._launch(round_)
            return "resumed"
        snapshot = st.Snapshot(generation=generation, event_id=new_id(), start_time=now())
        round_ = Round(self, ref, generation, spec, snapshot, previous_conditions=status.get("conditions"))
        self._launch(round_)
        return "started"

    def _resumed_round(
        self,
        ref: ObjectRef,
        generation: int,
        spec: Mapping[str, Any],
        status: Mapping[str, Any],
        record: Mapping[str, Any],
    ) -> Round:
        start = st.parse_time(status.get("startTime")) or now()
        snap = st.Snapshot(
            generation=generation,
            event_id=status["eventId"],
            start_time=start,
            targets=frozenset(record.get("targets") or ()),
            skipped=[(s.get("pod", ""), s.get("reason", "")) for s in status.get("skipped") or ()],
        )
        for entry in status.get("results") or ():
            result = st.PodResult.from_json(entry)
            if result is not None and result.outcome is not st.Outcome.TIMEOUT:
                snap.results[result.pod] = result
        for pod, code in (record.get("acked") or {}).items():
            if pod not in snap.results and pod in snap.targets:
                outcome = st.Outcome.UNCHANGED if code == "u" else st.Outcome.OK
                snap.results[pod] = st.PodResult(pod=pod, outcome=outcome, at=start)
        for cond in status.get("conditions") or ():
            if cond.get("type") in ("TargetsResolved", "SourcesReady", "Published"):
                snap.conditions[cond["type"]] = st.Condition(
                    cond["type"],
                    cond.get("status", "Unknown"),
                    cond.get("reason", "Unknown"),
                    cond.get("message", ""),
                )
        round_ = Round(self, ref, generation, spec, snap, list(status.get("conditions") or ()), dict(record))
        if not st.pending_pods(snap):
            round_.answered.set()
        return round_

    def _launch(self, round_: Round) -> None:
        self.rounds[(round_.ref.namespace, round_.ref.name)] = round_
        metrics.IN_FLIGHT.set(len(self.rounds))
        round_.task = asyncio.create_task(round_.run(), name=repr(round_))
        log.info("%r %s", round_, "resumed" if round_.resumed is not None else "started")

    def forget(self, namespace: str, name: str) -> None:
        """The object is being deleted: stop its round (nothing else to clean up)."""
        round_ = self.rounds.pop((namespace, name), None)
        if round_ is not None and round_.task is not None:
            round_.task.cancel()
        metrics.IN_FLIGHT.set(len(self.rounds))

    def round_ended(self, round_: Round) -> None:
        key = (round_.ref.namespace, round_.ref.name)
        if self.rounds.get(key) is round_:
            del self.rounds[key]
        metrics.IN_FLIGHT.set(len(self.rounds))

    # -- writes (serialised per object, across rounds) -----------------------------------

    async def _serialised(self, key: tuple[str, str], call: Any, *args: Any) -> Any:
        previous = self._writes.get(key)
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        future: asyncio.Future[Any] = asyncio.ensure_future(asyncio.to_thread(call, *args))
        self._writes[key] = future
        try:
            return await asyncio.shield(future)
        finally:
            if self._writes.get(key) is future and future.done():
                del self._writes[key]

    async def write_status(self, round_: Round, body: Mapping[str, Any]) -> None:
        started = time.monotonic()
        patch = {"metadata": {"uid": round_.ref.uid}, "status": body} if round_.ref.uid else {"status": body}
        await self._serialised(
            (round_.ref.namespace, round_.ref.name),
            self.kube.patch,
            cfr_path(round_.ref.namespace, round_.ref.name, status=True),
            patch,
        )
        metrics.STATUS_PATCHES.inc()
        log.debug("%r status written in %.0f ms", round_, (time.monotonic() - started) * 1000)

    async def write_annotation(self, round_: Round, record: Mapping[str, Any]) -> None:
        patch: dict[str, Any] = {"metadata": {"annotations": {ROUND_ANNOTATION: encode_round(record)}}}
        if round_.ref.uid:
            patch["metadata"]["uid"] = round_.ref.uid
        await self._serialised(
            (round_.ref.namespace, round_.ref.name),
            self.kube.patch,
            cfr_path(round_.ref.namespace, round_.ref.name),
            patch,
        )
