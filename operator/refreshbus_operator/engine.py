"""The engine: every round of this replica, the broker links they share, and the
per-object serialisation of their writes.

Rounds run as our own asyncio tasks (kopf handlers only start them), so a long refresh
never holds a kopf worker. Everything runs on kopf's event loop: no threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from refreshbus_wire import new_id, now

from refreshbus_operator import metrics
from refreshbus_operator import status as st
from refreshbus_operator.ackidentity import ISSUER_MEDIA_TYPES, AckVerifier, IssuerKeys, Mode
from refreshbus_operator.acks import AckConsumer, AckRouter
from refreshbus_operator.broker import AckQueueType
from refreshbus_operator.events import Recorder
from refreshbus_operator.kube import Kube, cfr_path
from refreshbus_operator.publishing import Publisher
from refreshbus_operator.records import ObjectRef, decode_round, encode_round
from refreshbus_operator.rollout import Rollout, saved_state
from refreshbus_operator.rolloutplan import spec_key
from refreshbus_operator.rounds import Round
from refreshbus_operator.settings import RELEASE_ANNOTATION, ROUND_ANNOTATION, Config
from refreshbus_operator.springbus.bridge import SpringBusBridge
from refreshbus_operator.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Engine:
    """Owns the broker links and every round of this replica."""

    def __init__(self, config: Config, kube: Kube, publisher: Publisher | None = None) -> None:
        self.config = config
        self.kube = kube
        self.publisher = publisher or Publisher(
            config.broker_urls, config.publish_retry_initial, config.publish_retry_max,
            AckQueueType(config.ack_queue_type),
        )
        self.recorder = Recorder(kube, config.instance)
        self.rounds: dict[tuple[str, str], Round] = {}
        #: Progressive rollouts (ConfigRefreshes with spec.rollout): orchestrators of child rounds.
        self.rollouts: dict[tuple[str, str], Rollout] = {}
        self._stoppers: set[asyncio.Task[None]] = set()
        self._writes: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self.verifier = AckVerifier(kube.apost, Mode(config.ack_identity), keys=IssuerKeys(
            lambda path: kube.arequest("GET", path, accept=ISSUER_MEDIA_TYPES)))
        self.router = AckRouter(
            settle=lambda tags: self.consumer.settle(tags),
            grace=config.unknown_ack_grace,
            max_parked=max(1, config.ack_prefetch // 10),
            verifier=self.verifier,
        )
        self.consumer = AckConsumer(
            config.broker_urls,
            deliver=self.router.handle,
            prefetch=config.ack_prefetch,
            retry_initial=config.publish_retry_initial,
            retry_max=config.publish_retry_max,
            queue_type=AckQueueType(config.ack_queue_type),
        )
        self.router.on_change = lambda: self.consumer.set_active(bool(self.router.rounds))
        self.consumer.on_reconnect = self._reconnected
        self._janitor: asyncio.Task[None] | None = None
        #: Set while kopf peering has paused this replica: no round starts or resumes.
        self.paused = False
        #: The Spring Cloud Bus bridge, when configured (rounds publish to and ack through it).
        self.springbus: SpringBusBridge | None = SpringBusBridge(config, kube) if config.spring_bus else None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.publisher.start()
        await self.consumer.start()
        self._janitor = asyncio.create_task(self._expire_parked(), name="refreshbus-ack-janitor")

    async def stop(self) -> None:
        """Stop without finishing rounds: their status stays InProgress, the acks they had
        not written yet go back to the queue, and a restarted operator resumes them."""
        await self.stop_rounds()
        await cancel_and_wait([self._janitor])
        await self.consumer.stop()
        await self.publisher.stop()

    async def stop_rounds(self) -> None:
        await cancel_and_wait(
            [r.task for r in self.rollouts.values()] + [r.task for r in self.rounds.values()]
        )
        await asyncio.gather(*list(self._stoppers), return_exceptions=True)

    def dead_workers(self) -> list[str]:
        """The worker tasks (publisher, ack consumer, janitor) that died or are stuck."""
        dead = [] if self.publisher.alive() else ["publisher"]
        dead += [] if self.consumer.alive() else ["ack consumer"]
        dead += [] if self._janitor is not None and not self._janitor.done() else ["ack janitor"]
        return dead

    def alive(self) -> bool:
        return not self.dead_workers()

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
        if self.paused:
            return "paused"
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
        rollout = self.rollouts.get(key)
        if rollout is not None:
            if rollout.ref.uid == uid and rollout.key == spec_key(spec) and not meta.get("deletionTimestamp"):
                # Only rollout.paused changed (or nothing): the same rollout holds or goes on.
                rollout.update(generation, spec)
                return "running"
            log.info("%r superseded (generation %s)", rollout, generation)
            stopping = self._stop(rollout.task)
            self.rollouts.pop(key, None)
        else:
            stopping = None
        if meta.get("deletionTimestamp"):
            return "deleting"
        ref = ObjectRef(ns, name, uid)
        if spec.get("rollout") is not None:
            return self._reconcile_rollout(
                ref, generation, spec, status, meta.get("annotations") or {}, stopping
            )
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
        round_ = Round(
            self, ref, generation, spec, snapshot, previous_conditions=status.get("conditions"),
            release=(meta.get("annotations") or {}).get(RELEASE_ANNOTATION),
        )
        self._launch(round_)
        return "started"

    def _reconcile_rollout(
        self,
        ref: ObjectRef,
        generation: int,
        spec: Mapping[str, Any],
        status: Mapping[str, Any],
        annotations: Mapping[str, Any],
        predecessor: asyncio.Task[None] | None,
    ) -> str:
        """Start or resume a rollout. Its identity is the spec without ``rollout.paused`` (kept
        in its state annotation), not the generation: resuming a paused rollout is no new one.
        It starts once ``predecessor`` (the superseded rollout being stopped) has ended: two
        rollouts must never change one release record at once."""
        state = saved_state(annotations)
        same = state is not None and state.get("spec") == spec_key(spec)
        if same and status.get("phase") in {p.value for p in st.FINAL_PHASES}:
            return "done"
        resumed = same and bool(status.get("rollout"))
        rollout = Rollout(self, ref, generation, spec, status if resumed else None, state if same else None)
        self.rollouts[(ref.namespace, ref.name)] = rollout
        rollout.task = asyncio.create_task(rollout.run(after=predecessor), name=repr(rollout))
        log.info("%r %s", rollout, "resumed" if resumed else "started")
        return "resumed" if resumed else "started"

    def rollout_ended(self, rollout: Rollout) -> None:
        key = (rollout.ref.namespace, rollout.ref.name)
        if self.rollouts.get(key) is rollout:
            del self.rollouts[key]

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
            if cond.get("type") in st.CONDITION_TYPES and cond.get("type") != "Complete":
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
        """The object is being deleted: stop its round or rollout (its children go with it:
        owner references)."""
        round_ = self.rounds.pop((namespace, name), None)
        if round_ is not None and round_.task is not None:
            round_.task.cancel()
        rollout = self.rollouts.pop((namespace, name), None)
        if rollout is not None:
            self._stop(rollout.task)
        metrics.IN_FLIGHT.set(len(self.rounds))

    def _stop(self, task: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
        """Stop ``task`` for good in the background (kopf's handlers call us synchronously);
        returns the task to await for its end."""
        if task is None:
            return None
        stopper = asyncio.create_task(cancel_and_wait([task]), name=f"stop {task.get_name()}")
        self._stoppers.add(stopper)
        stopper.add_done_callback(self._stoppers.discard)
        return stopper

    def round_ended(self, round_: Round) -> None:
        key = (round_.ref.namespace, round_.ref.name)
        if self.rounds.get(key) is round_:
            del self.rounds[key]
        metrics.IN_FLIGHT.set(len(self.rounds))

    # -- writes (serialised per object, across rounds) -----------------------------------

    async def _serialised(self, key: tuple[str, str], write: Coroutine[Any, Any, Any]) -> Any:
        previous = self._writes.get(key)
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        future: asyncio.Future[Any] = asyncio.ensure_future(write)
        self._writes[key] = future
        try:
            return await asyncio.shield(future)
        finally:
            if self._writes.get(key) is future and future.done():
                del self._writes[key]

    async def write_status(self, ref: ObjectRef, body: Mapping[str, Any]) -> None:
        started = time.monotonic()
        patch = {"metadata": {"uid": ref.uid}, "status": body} if ref.uid else {"status": body}
        await self._serialised(
            (ref.namespace, ref.name),
            self.kube.apatch(cfr_path(ref.namespace, ref.name, status=True), patch),
        )
        metrics.STATUS_PATCHES.inc()
        elapsed = (time.monotonic() - started) * 1000
        log.debug("%s/%s status written in %.0f ms", ref.namespace, ref.name, elapsed)

    async def write_annotation(self, round_: Round, record: Mapping[str, Any]) -> None:
        await self.write_annotations(round_.ref, {ROUND_ANNOTATION: encode_round(record)})

    async def write_annotations(self, ref: ObjectRef, annotations: Mapping[str, str]) -> None:
        patch: dict[str, Any] = {"metadata": {"annotations": dict(annotations)}}
        if ref.uid:
            patch["metadata"]["uid"] = ref.uid
        await self._serialised(
            (ref.namespace, ref.name), self.kube.apatch(cfr_path(ref.namespace, ref.name), patch)
        )
