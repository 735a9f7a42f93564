"""Pure rules of a progressive rollout (docs/rollout.md): which pods each step moves, what a
pod's state says about its health, and whether a step passed.

Nothing here talks to the API server: :mod:`refreshbus_operator.rollout` feeds it what it
read, so every rule is unit-tested directly.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from refreshbus_wire import pods as podc

#: One step as ``spec.rollout.steps`` holds it: a cumulative pod count or ``"NN%"``.
Step = int | str

#: The oldest sidecar protocol that follows the release record (refreshbus_wire 1.3): an
#: older sidecar applies the live ConfigMap, so it would take the new content at any time.
MIN_PROTOCOL = (1, 3)
#: On pods: the wire protocol of the injected sidecar (stamped by the injection webhook).
SIDECAR_PROTOCOL_ANNOTATION = podc.ANN_SIDECAR_PROTOCOL


# -- steps ---------------------------------------------------------------------------------


def step_size(step: Step, total: int) -> int:
    """How many pods, cumulatively, ``step`` covers of ``total`` (a percentage rounds up)."""
    if isinstance(step, str):
        percent = int(step.rstrip("%"))
        return min(total, math.ceil(total * percent / 100))
    return min(total, int(step))


def plan(steps: Sequence[Step], total: int) -> list[int]:
    """The cumulative pod count of each step over ``total`` pods: each step moves at least
    one more pod than the one before (while there are pods left), the last one moves all."""
    sizes: list[int] = []
    previous = 0
    for index, step in enumerate(steps):
        size = total if index == len(steps) - 1 else step_size(step, total)
        size = min(total, max(size, previous + 1))
        sizes.append(size)
        previous = size
    return sizes


def step_pods(
    steps: Sequence[Step],
    index: int,
    targets: Iterable[str],
    moved: Collection[str],
    ready: Collection[str] = (),
) -> list[str]:
    """The pods step ``index`` (0-based) moves: enough of the ``targets`` not ``moved`` yet to
    reach its cumulative size over the pods there are now (targets and moved ones). Ready pods
    first (a canary that is not Ready yet could not show whether the config breaks it), then
    by name: deterministic for the same pods."""
    present = set(targets)
    total = len(present | set(moved))
    want = plan(steps, total)[index]
    already = len(present & set(moved))
    fresh = sorted(present - set(moved), key=lambda pod: (pod not in ready, pod))
    return fresh[: max(0, want - already)]


# -- pods ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodState:
    """What the gates watch of one pod."""

    uid: str
    ready: bool
    #: Sum of every container's restartCount (init containers included: native sidecars).
    restarts: int
    terminating: bool = False
    protocol: str = ""

    def to_json(self) -> list[Any]:
        """The baseline kept in the parent's rollout annotation (for a restarted operator)."""
        return [self.uid, self.restarts, self.ready]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> PodState:
        return cls(uid=str(data[0]), restarts=int(data[1]), ready=bool(data[2]) if len(data) > 2 else True)


def pod_state(obj: Mapping[str, Any]) -> PodState:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
    )
    restarts = sum(
        int(c.get("restartCount") or 0)
        for key in ("initContainerStatuses", "containerStatuses")
        for c in status.get(key) or ()
    )
    return PodState(
        uid=str(meta.get("uid") or ""),
        ready=ready,
        restarts=restarts,
        terminating=meta.get("deletionTimestamp") is not None,
        protocol=str((meta.get("annotations") or {}).get(SIDECAR_PROTOCOL_ANNOTATION) or ""),
    )


def protocol_follows_record(version: str) -> bool:
    """Whether a sidecar of wire protocol ``version`` (``"1.3"``) follows the release record."""
    try:
        major, minor = (int(part) for part in version.split(".", 1))
    except ValueError:
        return False
    return major == MIN_PROTOCOL[0] and minor >= MIN_PROTOCOL[1]


def too_old(states: Mapping[str, PodState]) -> dict[str, str]:
    """Pods whose sidecar would not follow the record, with why."""
    out = {}
    for pod, state in sorted(states.items()):
        if protocol_follows_record(state.protocol):
            continue
        speaks = state.protocol or f"an older protocol (no {SIDECAR_PROTOCOL_ANNOTATION} annotation)"
        out[pod] = (
            f"SidecarTooOld: its sidecar speaks {speaks}; a rollout needs protocol 1.3 or later: "
            "restart the workload to get the current sidecar"
        )
    return out


# -- gates ---------------------------------------------------------------------------------


def health_failures(
    baseline: Mapping[str, PodState], current: Mapping[str, PodState]
) -> tuple[dict[str, str], set[str]]:
    """Compare the moved pods now with when they were moved. Returns (failing pod -> reason,
    pods gone): a pod deleted, terminating or replaced (another uid) is gone, not failing --
    scaling down or a rolling update is no verdict on the config. Not being Ready fails only
    a pod that was Ready when it was moved (one still starting says nothing about the config)."""
    failing: dict[str, str] = {}
    gone: set[str] = set()
    for pod, before in baseline.items():
        now = current.get(pod)
        if now is None or now.terminating or (before.uid and now.uid != before.uid):
            gone.add(pod)
            continue
        if now.restarts > before.restarts:
            failing[pod] = f"restarted {now.restarts - before.restarts} time(s) since it was moved"
        elif before.ready and not now.ready:
            failing[pod] = "not Ready (its Ready condition is not True) since it was moved"
    return failing, gone


def child_failures(status: Mapping[str, Any]) -> dict[str, str]:
    """The pods a step's child ConfigRefresh reports as failed or silent, with why."""
    return {
        str(r["pod"]): str(r.get("reason") or r.get("result"))
        for r in status.get("results") or ()
        if r.get("result") in ("failed", "timeout") and r.get("pod")
    }


def within_tolerance(failing: Collection[str], max_failures: int) -> bool:
    return len(failing) <= max_failures


# -- identity of a rollout's spec ----------------------------------------------------------


def spec_key(spec: Mapping[str, Any]) -> str:
    """A digest of the spec without ``rollout.paused``: pausing or resuming is the same
    rollout, any other change is a new one."""
    plain = json.loads(json.dumps(spec))
    rollout = plain.get("rollout")
    if isinstance(rollout, dict):
        rollout.pop("paused", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
