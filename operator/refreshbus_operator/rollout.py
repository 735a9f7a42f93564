"""A progressive rollout: one ConfigRefresh with ``spec.rollout``, run step by step.

A rollout is an orchestrator, not a round: it makes the ConfigMaps' live content the
candidate of the workload's release record (:mod:`refreshbus_operator.release`), then for each
step adds the step's pods to the candidate and creates a child ConfigRefresh
``<parent>-step-<n>`` for them (an ordinary round whose event names the record's revision),
waits for the child's final phase, bakes (watches the moved pods for ``bakeSeconds``) and
judges the step (:mod:`refreshbus_operator.rolloutplan`). The last step promotes the candidate.
A failed step rejects it: the record puts every pod back on the accepted revision, and a
child ``<parent>-rollback`` makes the moved pods apply it now.

What survives a restart: the record (candidate, moved pods), ``status.rollout`` (steps and
their verdicts) and the parent's annotation :data:`STATE_ANNOTATION` (the spec the rollout
runs and the moved pods' restart baselines). A restarted operator resumes from them; a
child that already exists is waited for, not created again.

Runs as its own asyncio task on kopf's loop, like a round; stopped with
:func:`refreshbus_operator.tasks.cancel_and_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from refreshbus_wire import now
from refreshbus_wire import release as wire

from refreshbus_operator import API_VERSION, KIND
from refreshbus_operator import release as rel
from refreshbus_operator import rolloutplan as plan
from refreshbus_operator import status as st
from refreshbus_operator import targets as tg
from refreshbus_operator.broker import backoff
from refreshbus_operator.kube import ApiError, cfr_path, pods_path, transient_reason, workload_path
from refreshbus_operator.records import ObjectRef
from refreshbus_operator.settings import RELEASE_ANNOTATION, ROLLOUT_PARENT_LABEL, STATE_ANNOTATION
from refreshbus_operator.sidecar_rbac import label_value

if TYPE_CHECKING:
    from refreshbus_operator.engine import Engine

log = logging.getLogger(__name__)

#: How often a child's status and the moved pods are read while waiting and baking.
POLL_INTERVAL = 1.0
#: Pods a child ConfigRefresh may name (``spec.target.pods`` maxItems); bigger steps get several.
CHILD_PODS = 100
MAX_LISTED = 100
MAX_FAILING = 50
MAX_NAME = 253
#: Extra time a child gets past its own deadline before the rollout calls it lost.
CHILD_GRACE = 30.0


class RefusalError(Exception):
    """The rollout cannot start or go on (``reason`` is the condition/Event reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def child_name(parent: str, suffix: str) -> str:
    """``<parent>-<suffix>``, hash-shortened when that would pass 253 characters."""
    full = f"{parent}-{suffix}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{parent[: MAX_NAME - len(suffix) - 12].rstrip('-.')}-{digest}-{suffix}"


def saved_state(annotations: Mapping[str, Any] | None) -> dict[str, Any] | None:
    raw = (annotations or {}).get(STATE_ANNOTATION)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class Rollout:
    """The rollout of one ConfigRefresh generation (pausing keeps it the same rollout)."""

    def __init__(
        self,
        engine: Engine,
        ref: ObjectRef,
        generation: int,
        spec: Mapping[str, Any],
        status: Mapping[str, Any] | None,
        state: Mapping[str, Any] | None,
    ) -> None:
        self.engine = engine
        self.ref = ref
        self.generation = generation
        self.spec = spec
        self.key = plan.spec_key(spec)
        rollout = spec.get("rollout") or {}
        self.steps: list[plan.Step] = list(rollout.get("steps") or [1, "25%", "100%"])
        self.bake = float(rollout.get("bakeSeconds", 30))
        self.max_failures = int(rollout.get("maxFailures", 0))
        self.auto_rollback = bool(rollout.get("autoRollback", True))
        self.unpaused = asyncio.Event()
        if not rollout.get("paused"):
            self.unpaused.set()
        workload = (spec.get("target") or {}).get("workload") or {}
        self.kind, self.workload = str(workload.get("kind", "")), str(workload.get("name", ""))
        self.record = wire.record_name(self.kind, self.workload)
        self.resumed = status is not None
        previous = dict((status or {}).get("rollout") or {})
        self.step_statuses: list[dict[str, Any]] = [dict(s) for s in previous.get("stepStatuses") or ()]
        self.failing: dict[str, str] = {
            f["pod"]: f["reason"] for f in previous.get("failingPods") or () if "pod" in f
        }
        self.state_name = str(previous.get("state") or "Progressing")
        self.revision = int(previous.get("candidateRevision") or 0)
        self.accepted = int(previous.get("acceptedRevision") or 0)
        self.rollback_refresh: str | None = previous.get("rollbackRefresh")
        self.start_time = st.parse_time((status or {}).get("startTime")) or now()
        self.completion_time: datetime | None = None
        self.phase = st.Phase.IN_PROGRESS
        self.message = "starting the rollout"
        self.conditions: list[dict[str, Any]] = list((status or {}).get("conditions") or ())
        self.baselines: dict[str, plan.PodState] = {
            pod: plan.PodState.from_json(v) for pod, v in ((state or {}).get("baselines") or {}).items()
        }
        #: Pods whose step's child answered ok or unchanged.
        self.reloaded: set[str] = set()
        self.targets = 0
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Rollout {self.ref.namespace}/{self.ref.name} gen={self.generation}>"

    # -- engine entry points ---------------------------------------------------------------

    def update(self, generation: int, spec: Mapping[str, Any]) -> None:
        """A spec change that left everything but ``rollout.paused`` as it was."""
        self.generation = generation
        self.spec = spec
        if (spec.get("rollout") or {}).get("paused"):
            self.unpaused.clear()
        else:
            self.unpaused.set()

    # -- the rollout -----------------------------------------------------------------------

    async def run(self, after: asyncio.Task[None] | None = None) -> None:
        try:
            if after is not None:
                await after
            await self._save_state()
            await self._run_despite_api_trouble()
        except asyncio.CancelledError:
            raise
        except RefusalError as exc:
            await self._refuse(exc)
        except Exception as exc:
            log.exception("%r failed unexpectedly", self)
            with contextlib.suppress(Exception):
                await self._refuse(RefusalError("InternalError", f"internal error in the operator: {exc}"))
        finally:
            self.engine.rollout_ended(self)

    async def _run_despite_api_trouble(self) -> None:
        """:meth:`_run`, again after the API server could not be reached: everything it did is
        in the record, status and annotation, so it picks up where it was."""
        attempt = 0
        while True:
            try:
                await self._run()
                return
            except Exception as exc:
                reason = transient_reason(exc)
                if reason is None:
                    raise
                delay = backoff(attempt, 1.0, 30.0)
                attempt += 1
                log.warning(
                    "%r: Kubernetes API unavailable (%s: %s); going on in %.1fs", self, reason, exc, delay
                )
                self.resumed = True
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        ns = self.ref.namespace
        kube = self.engine.kube
        release = await self._api(rel.read(kube, ns, self.kind, self.workload))
        if release is None:
            raise RefusalError(
                "NotVersioned",
                f"{self.kind} {self.workload} has no release record, so there is no accepted content to "
                "roll back to: give its pod template the annotation refreshbus.io/rollout (e.g. "
                '"1,25%,100%"); the operator then records the current content before any edit',
            )
        if self.rollback_refresh is not None or any(s.get("verdict") == "Failed" for s in self.step_statuses):
            await self._fail(resumed=True)
            return
        if self.resumed and self.revision and release.accepted.revision == self.revision:
            # Promoted just before a restart: only the completion is left to do.
            await self._complete()
            return
        if not self.resumed:
            live = {p: state for p, state in (await self._pods()).items() if not state.terminating}
            old = plan.too_old(live)
            if old:
                shown = "; ".join(f"{p}: {r}" for p, r in list(old.items())[:3])
                raise RefusalError(
                    "SidecarTooOld",
                    f"{len(old)} of {len(live)} pod(s) run a sidecar that does not follow the release record "
                    f"(so they could take the new content at any time: {shown})",
                )
        try:
            revision = await self._api(rel.propose(kube, ns, self.kind, self.workload, self.ref.name))
        except RefusalError as exc:
            if exc.reason != rel.AlreadyRejectedError.reason or not self.step_statuses:
                raise
            # Rejected just before a restart, before status said so: finish the rollback.
            await self._fail(resumed=True)
            return
        if self.revision and revision != self.revision:
            log.info(
                "%r: the record's candidate is no longer ours (now revision %d): starting over",
                self,
                revision,
            )
            self.step_statuses, self.failing, self.baselines = [], {}, {}
        self.revision = revision
        self.accepted = release.accepted.revision
        if revision == self.accepted:
            # The ConfigMaps hold the accepted content (an edit reverted, say): no candidate.
            self.state_name = "Completed"
            self.phase = st.Phase.SUCCEEDED
            self.message = f"nothing to roll out: the ConfigMaps hold revision {revision}, already accepted"
            await self._finish("Normal", "RolloutCompleted")
            return
        if not self.resumed:
            await self._event(
                "Normal",
                "RolloutStarted",
                f"rolling out revision {revision} of {self.record} in {len(self.steps)} step(s)",
            )
        for index in range(len(self.steps)):
            done = self.step_statuses[index] if index < len(self.step_statuses) else None
            if done is not None and done.get("verdict") == "Passed":
                continue
            if done is None and not self.unpaused.is_set():
                await self._pause(index)
            if not await self._step(index, done):
                await self._fail(resumed=False)
                return
        await self._complete()

    async def _pause(self, index: int) -> None:
        self.state_name = "Paused"
        self.message = f"paused before step {index + 1} of {len(self.steps)} (spec.rollout.paused)"
        await self._write()
        await self._event("Normal", "Paused", self.message)
        await self.unpaused.wait()
        self.state_name = "Progressing"
        await self._event("Normal", "Resumed", f"resumed: step {index + 1} of {len(self.steps)} starts")

    async def _step(self, index: int, entry: dict[str, Any] | None) -> bool:
        """Run step ``index`` (or resume it from ``entry``); True when it passed."""
        number = index + 1
        pods = await self._pods()
        moved = await self._moved()
        if entry is None:
            # Moved pods no step lists: moved just before a restart, never told. They go first.
            listed = {p for s in self.step_statuses for p in s.get("pods") or ()}
            unlisted = [p for p in moved if p not in listed and p in pods and not pods[p].terminating]
            ready = [p for p, state in pods.items() if state.ready]
            fresh = unlisted + plan.step_pods(self.steps, index, self._live(pods), moved, ready)
            old = plan.too_old({p: pods[p] for p in fresh})
            self.failing.update(old)
            fresh = [p for p in fresh if p not in old]
            entry = {
                "step": number,
                "refresh": child_name(self.ref.name, f"step-{number}"),
                "pods": fresh[:MAX_LISTED],
                "podCount": len(fresh),
                "verdict": "Running",
                "startTime": st.fmt_time(now(), seconds=True),
            }
            self.step_statuses.append(entry)
            if not plan.within_tolerance(self.failing, self.max_failures):
                return self._judge(entry, "pods with a sidecar too old to follow the release record")
            if not fresh:
                # Fewer pods than steps: nothing to move, nothing to watch for.
                entry.update(
                    verdict="Passed",
                    reason="no pod left to move",
                    completionTime=st.fmt_time(now(), seconds=True),
                )
                await self._write()
                return True
            for pod in fresh:
                self.baselines[pod] = pods[pod]
            await self._save_state()
            await self._api(
                rel.move(self.engine.kube, self.ref.namespace, self.kind, self.workload, self.revision, fresh)
            )
            self.state_name = "Progressing"
            self.message = (
                f"step {number} of {len(self.steps)}: moving {len(fresh)} pod(s) to revision {self.revision}"
            )
            await self._write()
            await self._event("Normal", "StepStarted", f"{self.message}: {', '.join(fresh[:10])}")
        else:
            fresh = await self._step_pods(entry, moved)
        self.targets = len(set(self._live(pods)) | set(moved) | set(fresh))
        if entry.get("verdict") == "Running":
            if fresh:
                results = await self._run_children(str(entry["refresh"]), fresh, self.revision)
                self.failing.update(results)
            if not plan.within_tolerance(self.failing, self.max_failures):
                return self._judge(entry, "reload failed")
            entry["verdict"] = "Baking"
            entry["bakeStartTime"] = st.fmt_time(now(), seconds=True)
            self.state_name = "Baking"
            self.message = f"step {number} of {len(self.steps)}: baking for {self.bake:g}s"
            await self._write()
        bake_start = st.parse_time(entry.get("bakeStartTime")) or now()
        if not await self._bake(bake_start + timedelta(seconds=self.bake)):
            return self._judge(entry, "a moved pod failed its health gate during the bake")
        entry["verdict"] = "Passed"
        entry["completionTime"] = st.fmt_time(now(), seconds=True)
        self.message = f"step {number} of {len(self.steps)} passed"
        await self._write()
        await self._event("Normal", "StepPassed", f"{self.message} ({entry.get('podCount', 0)} pod(s) moved)")
        return True

    async def _step_pods(self, entry: Mapping[str, Any], moved: Sequence[str]) -> list[str]:
        """The pods a resumed step moved: its listed ones, or (more than listed) the moved pods
        that no earlier step lists."""
        listed = list(entry.get("pods") or ())
        if int(entry.get("podCount") or 0) <= len(listed):
            return listed
        earlier = {p for s in self.step_statuses if s is not entry for p in s.get("pods") or ()}
        return [p for p in moved if p not in earlier]

    def _judge(self, entry: dict[str, Any], why: str) -> bool:
        if plan.within_tolerance(self.failing, self.max_failures):
            return True
        entry["verdict"] = "Failed"
        entry["completionTime"] = st.fmt_time(now(), seconds=True)
        shown = "; ".join(f"{p}: {r}" for p, r in sorted(self.failing.items())[:5])
        entry["reason"] = (
            f"{why}: {len(self.failing)} failing pod(s), {self.max_failures} tolerated: {shown}"[
                : st.MAX_REASON
            ]
        )
        return False

    async def _bake(self, until: datetime) -> bool:
        """Watch every moved pod until ``until``; False as soon as the failures are too many."""
        while True:
            failing, gone = plan.health_failures(self.baselines, await self._pods())
            for pod in gone:
                self.baselines.pop(pod, None)
            self.failing.update(failing)
            if not plan.within_tolerance(self.failing, self.max_failures):
                return False
            remaining = (until - now()).total_seconds()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(POLL_INTERVAL, remaining))

    async def _complete(self) -> None:
        kube, ns = self.engine.kube, self.ref.namespace
        moved = set(await self._moved()) | {p for s in self.step_statuses for p in s.get("pods") or ()}
        await self._api(rel.promote(kube, ns, self.kind, self.workload, self.revision))
        self.accepted = self.revision
        # Pods that appeared after the last step started run the accepted revision, which is
        # now this one: tell them (no waiting, no verdict: they are not part of the rollout).
        rest = [p for p in self._live(await self._pods()) if p not in moved]
        if rest:
            await self._create_children(child_name(self.ref.name, "rest"), rest, self.revision)
        self.state_name = "Completed"
        self.phase = st.Phase.SUCCEEDED
        self.message = (
            f"revision {self.revision} rolled out in {len(self.step_statuses)} step(s) and accepted"
        )
        await self._finish("Normal", "RolloutCompleted")

    async def _fail(self, resumed: bool) -> None:
        shown = "; ".join(f"{p}: {r}" for p, r in sorted(self.failing.items())[:5])
        reason = f"step failed: {shown}" if shown else "step failed"
        if not self.auto_rollback:
            self.state_name = "Failed"
            self.phase = st.Phase.FAILED
            self.message = (
                f"{reason}; autoRollback is off: the moved pods keep revision {self.revision} "
                "until a new rollout or refresh"
            )
            await self._finish("Warning", "RolloutFailed")
            return
        kube, ns = self.engine.kube, self.ref.namespace
        if not resumed:
            await self._event("Warning", "StepFailed", reason)
        moved = await self._api(rel.reject(kube, ns, self.kind, self.workload, self.revision, reason[:1024]))
        moved = moved or [p for s in self.step_statuses for p in s.get("pods") or ()]
        release = await self._api(rel.read(kube, ns, self.kind, self.workload))
        self.accepted = release.accepted.revision if release is not None else self.accepted
        self.rollback_refresh = child_name(self.ref.name, "rollback")
        self.message = f"{reason}; moving {len(moved)} pod(s) back to revision {self.accepted}"
        await self._write()
        live = set(self._live(await self._pods()))
        back = [p for p in moved if p in live]
        problems = await self._run_children(self.rollback_refresh, back, self.accepted) if back else {}
        self.state_name = "RolledBack"
        self.phase = st.Phase.ROLLED_BACK
        self.message = f"{reason}; {len(back)} pod(s) moved back to revision {self.accepted}"
        if problems:
            self.message += (
                f" ({len(problems)} did not confirm: "
                + "; ".join(f"{p}: {r}" for p, r in sorted(problems.items())[:5])
                + ")"
            )
        await self._finish("Warning", "RolledBack")

    async def _refuse(self, exc: RefusalError) -> None:
        self.state_name = "Failed"
        self.phase = st.Phase.FAILED
        self.message = exc.message
        await self._finish("Warning", exc.reason, condition_reason=exc.reason)

    async def _finish(self, type_: str, reason: str, condition_reason: str | None = None) -> None:
        self.completion_time = now()
        await self._write(condition_reason)
        await self._event(type_, reason, self.message)
        log.info("%r finished: %s (%s)", self, self.phase.value, self.message)

    # -- children --------------------------------------------------------------------------

    async def _run_children(self, base: str, pods: Sequence[str], revision: int) -> dict[str, str]:
        """Create the children moving ``pods`` to ``revision`` and wait for their final phase;
        returns the pods that failed, with why."""
        names = await self._create_children(base, pods, revision)
        failing: dict[str, str] = {}
        for name, chunk in names:
            status = await self._await_child(name)
            failing.update(plan.child_failures(status))
            results = {r.get("pod") for r in status.get("results") or ()}
            for pod in chunk:
                if pod not in results and status.get("phase") == st.Phase.FAILED.value:
                    failing[pod] = str(status.get("message") or "the step's refresh failed")
                elif pod not in failing:
                    self.reloaded.add(pod)
        return failing

    async def _create_children(
        self, base: str, pods: Sequence[str], revision: int
    ) -> list[tuple[str, list[str]]]:
        chunks = [list(pods[i : i + CHILD_PODS]) for i in range(0, len(pods), CHILD_PODS)]
        out = []
        for n, chunk in enumerate(chunks):
            name = base if n == 0 else f"{base}-{n + 1}"
            await self._create_child(name, chunk, revision)
            out.append((name, chunk))
        return out

    async def _create_child(self, name: str, pods: Sequence[str], revision: int) -> None:
        ns = self.ref.namespace
        release = json.dumps({"name": self.record, "revision": revision}, separators=(",", ":"))
        spec: dict[str, Any] = {"sources": self.spec["sources"], "target": {"pods": list(pods)}}
        for field in ("action", "deadlineSeconds"):
            if field in self.spec:
                spec[field] = self.spec[field]
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {ROLLOUT_PARENT_LABEL: label_value(self.ref.name)},
                "annotations": {
                    RELEASE_ANNOTATION: release,
                    STATE_ANNOTATION: json.dumps({"parent": self.key}),
                },
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": KIND,
                        "name": self.ref.name,
                        **({"uid": self.ref.uid} if self.ref.uid else {}),
                        "controller": True,
                        "blockOwnerDeletion": False,
                    }
                ],
            },
            "spec": spec,
        }
        while True:
            try:
                await self._api(self.engine.kube.apost(cfr_path(ns), body))
                return
            except ApiError as exc:
                if exc.status != 409:
                    raise
            existing = await self._child(name)
            if existing is None:
                continue
            annotations = (existing.get("metadata") or {}).get("annotations") or {}
            if (
                annotations.get(RELEASE_ANNOTATION) == release
                and saved_state(annotations) == {"parent": self.key}
                and sorted((existing.get("spec") or {}).get("target", {}).get("pods") or ()) == sorted(pods)
            ):
                return  # ours, from before a restart: wait for it
            # Left by an earlier rollout of this object: replace it.
            with contextlib.suppress(ApiError):
                await self.engine.kube.adelete(cfr_path(ns, name))
            await asyncio.sleep(POLL_INTERVAL)

    async def _child(self, name: str) -> dict[str, Any] | None:
        try:
            child: dict[str, Any] = await self._api(self.engine.kube.aget(cfr_path(self.ref.namespace, name)))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return child

    async def _await_child(self, name: str) -> dict[str, Any]:
        deadline = now() + timedelta(seconds=int(self.spec.get("deadlineSeconds") or 60) + CHILD_GRACE)
        while True:
            child = await self._child(name)
            if child is None:
                return {
                    "phase": st.Phase.FAILED.value,
                    "message": f"the step's ConfigRefresh {name} was deleted",
                }
            status = child.get("status") or {}
            generation = (child.get("metadata") or {}).get("generation")
            if (
                status.get("phase") in {p.value for p in st.FINAL_PHASES}
                and status.get("observedGeneration") == generation
            ):
                return dict(status)
            if now() > deadline:
                return {
                    "phase": st.Phase.FAILED.value,
                    "message": f"the step's ConfigRefresh {name} did not finish in time",
                }
            await asyncio.sleep(POLL_INTERVAL)

    # -- reading ---------------------------------------------------------------------------

    async def _pods(self) -> dict[str, plan.PodState]:
        """The workload's pods now (every phase), by name."""
        kube, ns = self.engine.kube, self.ref.namespace
        try:
            obj = await self._api(kube.aget(workload_path(ns, self.kind, self.workload)))
        except ApiError as exc:
            if exc.not_found:
                raise RefusalError(
                    "WorkloadNotFound", f"{self.kind} {self.workload!r} not found in {ns}"
                ) from None
            raise
        selector = (obj.get("spec") or {}).get("selector") or {}
        listing = await self._api(kube.aget(pods_path(ns), labelSelector=tg.selector_query(selector)))
        return {i["metadata"]["name"]: plan.pod_state(i) for i in listing.get("items") or ()}

    def _live(self, pods: Mapping[str, plan.PodState]) -> list[str]:
        """The pods a step may move: present and not terminating."""
        return sorted(p for p, s in pods.items() if not s.terminating)

    async def _moved(self) -> list[str]:
        release = await self._api(rel.read(self.engine.kube, self.ref.namespace, self.kind, self.workload))
        if release is None or release.candidate is None or release.candidate.revision != self.revision:
            return []
        return list(release.candidate.pods)

    async def _api(self, call: Any) -> Any:
        """Await a call; the record's refusals (no record, too large, contended) end the
        rollout with their reason."""
        try:
            return await call
        except rel.ReleaseError as exc:
            raise RefusalError(exc.reason, str(exc)) from None

    # -- writing ---------------------------------------------------------------------------

    async def _save_state(self) -> None:
        state = {"spec": self.key, "baselines": {p: s.to_json() for p, s in sorted(self.baselines.items())}}
        await self.engine.write_annotations(
            self.ref, {STATE_ANNOTATION: json.dumps(state, separators=(",", ":"))}
        )

    def render(self, condition_reason: str | None = None) -> dict[str, Any]:
        current = len(self.step_statuses)
        failed = len(self.failing)
        # Moved pods that took the new content: the passed steps' (also known after a
        # restart) or, when more, those whose child answered ok in this process.
        passed = sum(int(s.get("podCount") or 0) for s in self.step_statuses if s.get("verdict") == "Passed")
        succeeded = max(passed, len(self.reloaded - set(self.failing)))
        targets = max(self.targets, succeeded + failed)
        final = self.phase.final
        rollout = {
            "state": self.state_name,
            "step": current,
            "steps": len(self.steps),
            "progress": f"{current}/{len(self.steps)}",
            "release": self.record,
            "candidateRevision": self.revision,
            "acceptedRevision": self.accepted,
            "stepStatuses": self.step_statuses,
            "failingPods": [
                {"pod": p, "reason": r[: st.MAX_REASON]}
                for p, r in sorted(self.failing.items())[:MAX_FAILING]
            ],
            "rollbackRefresh": self.rollback_refresh,
        }
        at = now()
        complete = {
            "type": "Complete",
            "status": "True" if final else "False",
            "reason": condition_reason or (self.phase.value if final else "InProgress"),
            "message": self.message[: st.MAX_MESSAGE],
            "lastTransitionTime": st.fmt_time(at, seconds=True),
            "observedGeneration": self.generation,
        }
        old = next((c for c in self.conditions if c.get("type") == "Complete"), None)
        if old is not None and old.get("status") == complete["status"]:
            complete["lastTransitionTime"] = old.get("lastTransitionTime") or complete["lastTransitionTime"]
        self.conditions = [complete]
        return {
            "phase": self.phase.value,
            "message": self.message[: st.MAX_MESSAGE],
            "observedGeneration": self.generation,
            "startTime": st.fmt_time(self.start_time, seconds=True),
            "completionTime": st.fmt_time(self.completion_time, seconds=True)
            if self.completion_time
            else None,
            "counts": {
                "targets": targets,
                "acked": succeeded + failed,
                "succeeded": succeeded,
                "unchanged": 0,
                "failed": failed,
                "pending": targets - succeeded - failed,
                "skipped": 0,
            },
            "conditions": self.conditions,
            "rollout": rollout,
            "eventId": None,
            "results": [],
            "resultsTruncated": 0,
            "skipped": [],
        }

    async def _write(self, condition_reason: str | None = None) -> None:
        await self.engine.write_status(self.ref, self.render(condition_reason))

    async def _event(self, type_: str, reason: str, message: str) -> None:
        await self.engine.recorder.post(
            self.ref.namespace, self.ref.name, self.ref.uid, type_, reason, message
        )
