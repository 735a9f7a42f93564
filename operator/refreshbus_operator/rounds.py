"""One ConfigRefresh round, from resolution to a final phase.

A round: resolve targets -> check sources -> persist the round (annotation) and
``Pending`` -> publish (confirmed) -> ``InProgress`` -> fold acks (batched status
PATCHes) -> final phase when every target answered, or ``TimedOut`` at the deadline.

Restart safety: the round's event id, targets and source versions are written to the
annotation ``refreshbus.io/round`` before anything is published, and per-pod results
go to status (plus, when status had to truncate them, into the annotation). A restarted
operator rebuilds the round from both, waits ``resume_grace`` for acks that queued up
while it was away, then re-publishes the same event id to the targets that have not
answered, and only to them.

Versioned workloads (a release record, :mod:`refreshbus_operator.release`): a rollout's
step or rollback (a child ConfigRefresh annotated ``refreshbus.io/release``) publishes
that record revision as the event's ``release`` (protocol 1.3). A plain round that
refreshes ConfigMaps first makes their live content the accepted revision of each
versioned workload among its targets and names that revision: the sidecars follow the
record, so without it a plain refresh would change nothing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from refreshbus_wire import (
    Ack,
    ProtocolError,
    RefreshEvent,
    RefreshRef,
    ReleaseRef,
    Scope,
    Source,
    SourceKind,
    Target,
    encode,
    now,
)
from refreshbus_wire.destination import expand
from refreshbus_wire.release import record_name
from refreshbus_wire.routing import pod_key

from refreshbus_operator import metrics
from refreshbus_operator import release as rs
from refreshbus_operator import status as st
from refreshbus_operator import targets as tg
from refreshbus_operator.ackidentity import Check, Verdict
from refreshbus_operator.acks import Tag
from refreshbus_operator.broker import backoff
from refreshbus_operator.kube import ApiError, source_path, transient_reason
from refreshbus_operator.publishing import PublishError
from refreshbus_operator.records import ObjectRef, spec_action, spec_source_entries
from refreshbus_operator.settings import RELEASE_ANNOTATION
from refreshbus_operator.springbus.answers import SpringAnswers

if TYPE_CHECKING:
    from refreshbus_operator.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 60
#: Warning Events about acks whose identity did not check out, at most per round (one per
#: pod and kind of failure): a flood of forged acks must not become a flood of Events.
MAX_IDENTITY_EVENTS = 10
FINAL_WRITE_RETRY_MAX = 10.0
#: Least time between two writes of the acked pods into the round annotation.
ANNOTATE_INTERVAL = 2.0


def spring_answers(spec: Mapping[str, Any]) -> SpringAnswers | None:
    """``spec.springBus``: also publish the refresh on the Spring Cloud Bus. Its destination
    defaults to the target's ``destination``, else ``**``; expanded as Spring's sender does."""
    wanted = spec.get("springBus")
    if not isinstance(wanted, Mapping):
        return None
    destination = wanted.get("destination") or (spec.get("target") or {}).get("destination") or "**"
    expected = wanted.get("expectedInstances")
    return SpringAnswers(destination=expand(destination), expected=int(expected) if expected else None)


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
        release: str | None = None,
    ) -> None:
        self.engine = engine
        self.ref = ref
        self.generation = generation
        self.spec = spec
        self.snapshot = snapshot
        self.previous_conditions = previous_conditions
        self.resumed = resumed  # the decoded round annotation when resuming
        #: The ``refreshbus.io/release`` annotation (a rollout's child): what its event names.
        self.release_annotation = release
        #: The release record revision each versioned workload's pods are sent (kind, name).
        self.releases: dict[tuple[str, str], ReleaseRef] = {}
        #: Target pod -> its workload (kind, name), as resolved (empty when resumed).
        self.pod_workloads: dict[str, tuple[str, str]] = {}
        #: A rollout's child: the record revision every pod must ack as the one it runs.
        self.expected_revision: int | None = None
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
        self._annotated_at = -ANNOTATE_INTERVAL
        self._annotation_due = False
        self.routing_keys: tuple[str, ...] = ()
        self._nudging = False
        self._closed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._identity_failures = 0
        self._identity_events: set[tuple[str, Check]] = set()
        #: Target pod -> uid, as resolved (empty when resumed: acks then get TokenReviews).
        self.pod_uids: dict[str, str] = {}
        #: Spring instances' answers when the spec asks for the Spring bus too: until they are
        #: collected the round is not final, whatever its pods answered.
        self.spring = spring_answers(spec)
        if self.spring is not None:
            snapshot.awaiting = "Spring bus answers"

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
        reason = ack.error
        if outcome.success and self.expected_revision is not None and ack.revision != self.expected_revision:
            # A rollout gate must never pass on content read from a stale (or no) record, nor
            # on an old sidecar that applied the live ConfigMaps instead.
            outcome = st.Outcome.FAILED
            applied = "no release revision" if ack.revision is None else f"release revision {ack.revision}"
            reason = f"applied {applied}, expected {self.expected_revision}"
        self.snapshot.results[ack.pod] = st.PodResult(
            pod=ack.pod,
            outcome=outcome,
            at=at,
            reason=reason,
            config_hash=ack.config_hash,
            latency_ms=int((at - self.published_at).total_seconds() * 1000),
        )
        metrics.POD_RESULTS.labels(result=outcome.value).inc()
        metrics.ACK_LATENCY.observe(max(0.0, (at - self.published_at).total_seconds()))
        self.unsettled.append(tag)
        if self.engine.springbus is not None:
            self.engine.springbus.pod_answered(self.ref, ack.pod, outcome.success)
        # Only a result for every target can end the round: the full check (linear) runs
        # then, not once per ack (quadratic at thousands of targets).
        if len(self.snapshot.results) >= len(self.snapshot.targets) and not st.pending_pods(self.snapshot):
            self.answered.set()
        self.dirty.set()
        return "folded"

    def pod_uid(self, pod: str) -> str | None:
        return self.pod_uids.get(pod)

    def refused(self, ack: Ack, verdict: Verdict, enforced: bool) -> None:
        """Shown in status (condition ``AckIdentity``) and, once per pod and kind of failure,
        as a Warning Event; a refused ack is never a pod's result."""
        self._identity_failures += 1
        what = "refused" if enforced else "accepted anyway (ackIdentity: warn)"
        reason = "AckForged" if verdict.check is Check.FORGED else "AckUnverified"
        self.snapshot.conditions["AckIdentity"] = st.Condition(
            "AckIdentity",
            "False",
            reason,
            f"{self._identity_failures} ack(s) whose sender could not be verified as the pod they speak "
            f"for were {what}; last: pod {ack.pod}: {verdict.detail}",
        )
        self.dirty.set()
        key = (ack.pod, verdict.check)
        if key in self._identity_events or len(self._identity_events) >= MAX_IDENTITY_EVENTS:
            return
        self._identity_events.add(key)
        message = f"an ack speaking for pod {ack.pod} was {what}: {verdict.detail}"
        self._spawn(
            self.engine.recorder.warning(self.ref.namespace, self.ref.name, self.ref.uid, reason, message),
            f"identity event {self.ref.name}",
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                if not await self._prepare_despite_api_trouble():
                    return
            else:
                self._load_sources(self.resumed.get("sources") or [])
                saved = self.resumed.get("releases") or []
                self.releases = {(k, n): ReleaseRef(record, revision) for k, n, record, revision in saved}
                self.expected_revision = self.resumed.get("expectedRevision")
            engine.router.register(self.event_id, self)
            flusher = asyncio.create_task(self._flusher(), name=f"flush {self.ref.name}")
            try:
                await self._publish()
                await self._await_answers()
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
            if engine.springbus is not None:
                engine.springbus.round_ended(self.ref)
                engine.springbus.forget(self.snapshot.event_id or "")
            # Deliveries folded but never written to status (cancelled, stopping) are not
            # acked: the broker redelivers them (to a restarted or the next active replica).
            self.unsettled = []
            engine.round_ended(self)

    async def _prepare_despite_api_trouble(self) -> bool:
        """:meth:`_prepare`, again while the API server cannot be reached, until the deadline.

        Reads already retry for ``api_retry_timeout``; an outage longer than that (an API
        server restart on a loaded control plane) must not turn the user's refresh into
        ``Failed``: nothing was published yet, so asking again is always safe."""
        attempt = 0
        while True:
            try:
                return await self._prepare()
            except Exception as exc:
                reason = transient_reason(exc)
                if reason is None:
                    raise
                self.sources.clear()
                remaining = (self.deadline - now()).total_seconds()
                if remaining <= 0:
                    text = f"the Kubernetes API server could not be reached before the deadline ({exc})"
                    self.snapshot.conditions["TargetsResolved"] = st.Condition(
                        "TargetsResolved", "False", "APIUnavailable", text
                    )
                    return await self._abort(text, "APIUnavailable")
                delay = min(remaining, backoff(attempt, 1.0, 10.0))
                attempt += 1
                log.warning("%r: Kubernetes API unavailable (%s: %s); resolving again in %.1fs",
                            self, reason, exc, delay)
                await asyncio.sleep(delay)

    async def _prepare(self) -> bool:
        """Resolve, validate, persist and write Pending. False when the round ended here."""
        engine, ns = self.engine, self.ref.namespace
        snap = self.snapshot
        try:
            resolution = await tg.fetch_and_resolve(engine.kube, ns, self.spec["target"])
        except tg.TargetError as exc:
            snap.conditions["TargetsResolved"] = st.Condition(
                "TargetsResolved", "False", exc.reason, exc.message
            )
            return await self._abort(exc.message, "TargetsNotResolved")
        snap.targets = resolution.names
        snap.skipped = resolution.skipped
        self.pod_uids = {p.name: p.uid for p in resolution.targets if p.uid}
        if not resolution.targets and self.spring is not None:
            snap.conditions["TargetsResolved"] = st.Condition(
                "TargetsResolved", "True", "SpringBusOnly",
                f"no refreshbus pod matched ({len(resolution.skipped)} skipped); the Spring bus only",
            )
        elif not resolution.targets:
            text = "no running, opted-in pod matched the target"
            if resolution.skipped:
                text += f" ({len(resolution.skipped)} matching pod(s) skipped, e.g. "
                text += f"{resolution.skipped[0][0]}: {resolution.skipped[0][1]})"
            snap.conditions["TargetsResolved"] = st.Condition("TargetsResolved", "False", "NoTargets", text)
            return await self._abort(text, "NoTargets")
        else:
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
        self.pod_workloads = {p.name: p.workload for p in resolution.targets if p.workload is not None}
        try:
            await self._settle_releases(wanted)
        except rs.ReleaseError as exc:
            text = f"release record: {exc}"
            snap.conditions["SourcesReady"] = st.Condition("SourcesReady", "False", exc.reason, text)
            return await self._abort(text, exc.reason)
        snap.conditions["SourcesReady"] = st.Condition(
            "SourcesReady", "True", "SourcesFound", ", ".join(f"{k} {n}" for k, n in wanted)
        )
        snap.conditions["Published"] = st.Condition(
            "Published", "Unknown", "Publishing", "publishing the event"
        )
        self.routing_keys = resolution.routing_keys
        await engine.write_annotation(self, self._round_record())
        await self._write_status()
        named = sorted({(r.name, r.revision) for r in self.releases.values()})
        versions = "".join(f", {record} revision {revision}" for record, revision in named)
        await engine.recorder.normal(
            ns,
            self.ref.name,
            self.ref.uid,
            "Started",
            f"refresh {self.event_id} of {', '.join(f'{k}/{n}' for k, n in wanted)} to "
            f"{len(resolution.targets)} pod(s) ({len(resolution.skipped)} skipped){versions}",
        )
        return True

    async def _settle_releases(self, wanted: list[tuple[str, str]]) -> None:
        """Which record revision each versioned workload's events name (see the module doc).

        Raises:
            ReleaseError: an unreadable ``refreshbus.io/release``, or the live content cannot
                be accepted (e.g. the record would pass 1 MiB).
        """
        workloads = sorted(set(self.pod_workloads.values()))
        if self.release_annotation is not None:
            try:
                ref = ReleaseRef.from_json(json.loads(self.release_annotation))
            except (ValueError, ProtocolError) as exc:
                raise rs.ReleaseError(
                    f'the annotation {RELEASE_ANNOTATION} is not {{"name": <record>, "revision": N}}: {exc}'
                ) from None
            self.releases = {w: ref for w in workloads}
            self.expected_revision = ref.revision
            return
        if not any(kind == "ConfigMap" for kind, _ in wanted):
            return  # a Secret is never versioned: the records stay as they are
        ns, kube = self.ref.namespace, self.engine.kube
        for kind, name in workloads:
            try:
                revision = await rs.accept_live(kube, ns, kind, name, self.ref.name)
            except rs.NotVersionedError:
                continue
            self.releases[(kind, name)] = ReleaseRef(record_name(kind, name), revision)

    def release_for(self, pod: str | None) -> ReleaseRef | None:
        """The release an event to ``pod`` (None: to the targeted workload) names."""
        if pod is None:
            workload = self.spec["target"]["workload"]
            return self.releases.get((workload["kind"], workload["name"]))
        workload = self.pod_workloads.get(pod)
        if workload is not None:
            return self.releases.get(workload)
        # Resumed: the pods' workloads are not kept, only the releases; one versioned
        # workload per round (target.workload, a rollout's step) is the case that matters.
        return next(iter(self.releases.values())) if len(self.releases) == 1 else None

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
        if self.releases:
            # [kind, name, record, revision]: a resumed round names the same revisions.
            record["releases"] = [[k, n, r.name, r.revision] for (k, n), r in sorted(self.releases.items())]
        if self.expected_revision is not None:
            record["expectedRevision"] = self.expected_revision
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
        addressed: list[tuple[str, Target, ReleaseRef | None]]
        if pods is None and self.routing_keys and self.routing_keys[0].startswith("refresh.workload."):
            workload = self.spec["target"]["workload"]
            addressed = [
                (
                    self.routing_keys[0],
                    Target(scope=Scope.WORKLOAD, namespace=ns, kind=workload["kind"], name=workload["name"]),
                    self.release_for(None),
                )
            ]
        else:
            names = pods if pods is not None else sorted(self.snapshot.targets)
            addressed = [
                (pod_key(ns, p), Target(scope=Scope.POD, namespace=ns, name=p), self.release_for(p))
                for p in names
            ]
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
                        release=release,
                    )
                ),
            )
            for key, target, release in addressed
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
        messages = self._messages(pods)
        try:
            await engine.publisher.publish(messages, timeout=remaining, on_retry=self.broker_trouble)
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
        if self.spring is not None and self.resumed is None:
            await self._publish_spring(self.spring)

    async def _publish_spring(self, spring: SpringAnswers) -> None:
        bridge = self.engine.springbus
        if bridge is None:
            spring.problem = "the Spring bus bridge is off (chart value springBus.enabled)"
        else:
            await bridge.publish_refresh(self.event_id, spring)
        self.dirty.set()

    async def _await_answers(self) -> None:
        await self._await_pods()
        if self.spring is not None:
            await self._await_spring(self.spring)

    async def _await_spring(self, spring: SpringAnswers) -> None:
        """Collect Spring acks: until ``expectedInstances`` answered, else for the answer
        window after publishing; never past the deadline."""
        try:
            if spring.published_at is not None:
                await self._collect_spring(spring, spring.published_at)
        finally:
            self.snapshot.awaiting = None

    async def _collect_spring(self, spring: SpringAnswers, published_at: datetime) -> None:
        until = self.deadline
        if spring.expected is None:
            window = published_at + timedelta(seconds=self.engine.config.spring_bus_answer_window)
            until = min(until, window)
        while not spring.complete:
            remaining = (until - now()).total_seconds()
            if remaining <= 0:
                return
            spring.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spring.changed.wait(), timeout=remaining)
            self.dirty.set()

    async def _await_pods(self) -> None:
        """Until every target answered or the deadline, re-publishing (same event id) to the
        silent ones at a backing-off interval: an event can be lost on the sidecar's side (its
        exclusive queue goes with its connection). No API request: nothing is written."""
        config = self.engine.config
        interval = config.renudge_initial
        answered = len(self.snapshot.results)
        while st.pending_pods(self.snapshot):
            remaining = (self.deadline - now()).total_seconds()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self.answered.wait(), timeout=min(remaining, interval))
                return
            except TimeoutError:
                pass
            if len(self.snapshot.results) > answered:
                # Acks are still coming in: the silent pods' are most likely queued behind
                # them, not lost. Re-publishing to thousands then doubled the work of a big
                # round (and of its sidecars) and made it slower still; wait another interval.
                answered = len(self.snapshot.results)
                continue
            self.nudge("not answered yet")
            interval = min(interval * 2, config.renudge_max)

    def nudge(self, why: str = "broker reconnected") -> None:
        """Re-publish the event to the targets that have not answered (once at a time)."""
        published = self.snapshot.conditions.get("Published")
        if self.final or self._nudging or published is None or published.status != "True":
            return
        if not st.pending_pods(self.snapshot):
            return
        self._nudging = True
        self._spawn(self._republish(why), f"nudge {self.ref.name}")

    async def _republish(self, why: str) -> None:
        try:
            pods = st.pending_pods(self.snapshot)
            remaining = (self.deadline - now()).total_seconds()
            if pods and remaining > 0:
                log.info("%r: %s, re-publishing to %d pod(s) that have not answered",
                         self, why, len(pods))
                await self.engine.publisher.publish(self._messages(pods), timeout=remaining)
        except Exception as exc:
            log.warning("%r: re-publishing failed: %s", self, exc)
        finally:
            self._nudging = False

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

    def _render(self, at: datetime) -> dict[str, Any]:
        body = st.render(self.snapshot, at, self.previous_conditions)
        if self.spring is not None:
            body["springBus"] = self.spring.render()
        return body

    async def _write_status(self) -> None:
        tags, self.unsettled = self.unsettled, []
        body = self._render(now())
        try:
            await self.engine.write_status(self.ref, body)
        except BaseException:
            self.unsettled = tags + self.unsettled
            raise
        self.previous_conditions = body["conditions"]
        # Only now that status holds these acks may the broker forget them.
        self.engine.consumer.settle(tags)
        await self._maybe_annotate_acks()

    async def _maybe_annotate_acks(self) -> None:
        """Results truncated out of status are kept in the round annotation (for resume),
        at most every :data:`ANNOTATE_INTERVAL`: the record holds every acked pod, and
        writing it at each status flush was a PATCH of the whole list every 0.2 s. What a
        restart finds missing from it is only re-published (sidecars dedupe by event id)."""
        if len(self.snapshot.results) <= st.MAX_RESULTS or len(self.snapshot.results) == self._annotated_acks:
            return
        wait = self._annotated_at + ANNOTATE_INTERVAL - time.monotonic()
        if wait > 0:
            if not self._annotation_due:
                self._annotation_due = True
                asyncio.get_running_loop().call_later(wait, self.dirty.set)
            return
        self._annotation_due = False
        acked = {p: r.outcome.value[0] for p, r in self.snapshot.results.items() if r.outcome.success}
        self._annotated_at = time.monotonic()
        await self.engine.write_annotation(self, self._round_record(acked))
        self._annotated_acks = len(self.snapshot.results)

    async def _finish(self, post_event: bool = True) -> None:
        self.final = True
        self.snapshot.completion_time = now()
        body = self._render(self.snapshot.completion_time)
        # Until the final status is written the round is not over: its acks stay unsettled
        # (and in flight here) however long the API refuses; a new generation, a delete or
        # the operator stopping cancels this, and the broker then redelivers them.
        attempt = 0
        while True:
            try:
                await self.engine.write_status(self.ref, body)
                break
            except ApiError as exc:
                if exc.not_found or exc.conflict:  # gone, or replaced by a new object
                    return
                log.warning("%r: final status write failed (%s); retrying", self, exc)
            except Exception as exc:
                log.warning("%r: final status write failed (%s); retrying", self, exc)
            await asyncio.sleep(min(FINAL_WRITE_RETRY_MAX, 0.2 * 2**attempt))
            attempt += 1
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
