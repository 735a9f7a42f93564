"""Pure functions: per-pod results in, a ConfigRefresh ``status`` out.

Nothing here talks to the API server or the broker, so every rule (counts, phase,
failures-first bounding, conditions, the summary message) is unit-tested directly.
Invariants the rendered status keeps: ``targets = succeeded + failed + pending`` and
``acked = succeeded + (failed - timeouts)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

MAX_RESULTS = 100
MAX_SKIPPED = 50
MAX_REASON = 1024
MAX_MESSAGE = 4096


class Phase(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    PARTIALLY_FAILED = "PartiallyFailed"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    #: A progressive rollout failed a step and put its moved pods back (docs/rollout.md).
    ROLLED_BACK = "RolledBack"

    @property
    def final(self) -> bool:
        return self in FINAL_PHASES


FINAL_PHASES = frozenset(
    {Phase.SUCCEEDED, Phase.PARTIALLY_FAILED, Phase.FAILED, Phase.TIMED_OUT, Phase.ROLLED_BACK}
)


class Outcome(StrEnum):
    OK = "ok"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    TIMEOUT = "timeout"

    @property
    def success(self) -> bool:
        return self in (Outcome.OK, Outcome.UNCHANGED)


# Order of results in status: failures first, then successes.
_ORDER = {Outcome.FAILED: 0, Outcome.TIMEOUT: 1, Outcome.OK: 2, Outcome.UNCHANGED: 3}


@dataclass(frozen=True, slots=True)
class PodResult:
    pod: str
    outcome: Outcome
    at: datetime
    reason: str | None = None
    config_hash: str | None = None
    latency_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pod": self.pod, "result": self.outcome.value, "at": fmt_time(self.at)}
        if self.reason:
            out["reason"] = self.reason[:MAX_REASON]
        if self.config_hash:
            out["configHash"] = self.config_hash[:128]
        if self.latency_ms is not None:
            out["latencyMs"] = max(0, int(self.latency_ms))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodResult | None:
        """Read back an entry written by :meth:`to_json` (None for foreign/skipped ones)."""
        try:
            outcome = Outcome(data["result"])
            at = parse_time(data.get("at")) or datetime.now(UTC)
            return cls(
                pod=str(data["pod"]),
                outcome=outcome,
                at=at,
                reason=data.get("reason"),
                config_hash=data.get("configHash"),
                latency_ms=data.get("latencyMs"),
            )
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


@dataclass
class Counts:
    targets: int = 0
    acked: int = 0
    succeeded: int = 0
    unchanged: int = 0
    failed: int = 0
    pending: int = 0
    skipped: int = 0
    timeouts: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "targets": self.targets,
            "acked": self.acked,
            "succeeded": self.succeeded,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "pending": self.pending,
            "skipped": self.skipped,
        }


@dataclass
class Snapshot:
    """What the operator knows about one refresh round; the input of :func:`render`."""

    generation: int
    event_id: str | None
    start_time: datetime
    targets: frozenset[str] = frozenset()
    results: dict[str, PodResult] = field(default_factory=dict)
    skipped: Sequence[tuple[str, str]] = ()
    #: Facts established so far, one per condition type (TargetsResolved, SourcesReady, Published).
    conditions: dict[str, Condition] = field(default_factory=dict)
    #: Set when the round could not even be sent (no targets, bad source): final Failed.
    aborted: str | None = None
    completion_time: datetime | None = None
    timed_out: bool = False
    #: Answers still awaited from outside the pods (the Spring bus, docs/spring-bus.md): the
    #: round is not final while this is set, even when every pod answered.
    awaiting: str | None = None


def count(snapshot: Snapshot) -> Counts:
    c = Counts(targets=len(snapshot.targets), skipped=len(snapshot.skipped))
    for result in snapshot.results.values():
        if result.pod not in snapshot.targets:
            continue
        if result.outcome is Outcome.OK:
            c.succeeded += 1
        elif result.outcome is Outcome.UNCHANGED:
            c.succeeded += 1
            c.unchanged += 1
        elif result.outcome is Outcome.FAILED:
            c.failed += 1
        else:
            c.failed += 1
            c.timeouts += 1
    c.acked = c.succeeded + c.failed - c.timeouts
    c.pending = c.targets - c.succeeded - c.failed
    return c


def pending_pods(snapshot: Snapshot) -> list[str]:
    return sorted(p for p in snapshot.targets if p not in snapshot.results)


def phase(snapshot: Snapshot) -> Phase:
    """The phase the snapshot is in. Final phases need every target answered (or timed out)."""
    if snapshot.aborted is not None:
        return Phase.FAILED
    c = count(snapshot)
    if c.pending > 0 or snapshot.awaiting is not None:
        published = snapshot.conditions.get("Published")
        return Phase.IN_PROGRESS if published is not None and published.status == "True" else Phase.PENDING
    if c.timeouts > 0:
        return Phase.TIMED_OUT
    if c.failed == 0:
        return Phase.SUCCEEDED
    if c.succeeded == 0:
        return Phase.FAILED
    return Phase.PARTIALLY_FAILED


def time_out(snapshot: Snapshot, at: datetime, deadline_seconds: int) -> list[str]:
    """Mark every still-pending target as timed out; returns their names."""
    silent = pending_pods(snapshot)
    for pod in silent:
        snapshot.results[pod] = PodResult(
            pod=pod, outcome=Outcome.TIMEOUT, at=at, reason=f"no answer within {deadline_seconds}s"
        )
    snapshot.timed_out = True
    return silent


def bounded_results(results: Iterable[PodResult], limit: int = MAX_RESULTS) -> tuple[list[PodResult], int]:
    """Failures first (failed, timeout, then ok, unchanged), by pod name within a group;
    at most ``limit`` entries. Returns the entries and how many were left out."""
    results = list(results)
    # The first ``limit`` only: status is rendered at every flush of a round of thousands.
    ordered = heapq.nsmallest(limit, results, key=lambda r: (_ORDER[r.outcome], r.pod))
    return ordered, max(0, len(results) - limit)


def summary(snapshot: Snapshot, ph: Phase | None = None) -> str:
    """One line a human reads in ``kubectl get cfr -o wide``."""
    ph = ph or phase(snapshot)
    if snapshot.aborted is not None:
        return snapshot.aborted[:MAX_MESSAGE]
    c = count(snapshot)
    if ph is Phase.PENDING:
        publish = snapshot.conditions.get("Published")
        text = f"sending to {c.targets} pod(s)"
        if publish is not None and publish.status == "False":
            text += f": {publish.message}"
        return text[:MAX_MESSAGE]
    if ph is Phase.IN_PROGRESS:
        text = f"{c.acked} of {c.targets} pod(s) answered, {c.succeeded} reloaded"
        if snapshot.awaiting is not None and c.pending == 0:
            text += f"; waiting for {snapshot.awaiting}"
        return text[:MAX_MESSAGE]
    text = f"{c.succeeded} of {c.targets} pod(s) run the new config"
    if c.unchanged:
        text += f" ({c.unchanged} already had it)"
    failures, _ = bounded_results(r for r in snapshot.results.values() if not r.outcome.success)
    if failures:
        shown = "; ".join(f"{r.pod}: {r.reason or r.outcome.value}" for r in failures[:5])
        more = c.failed - min(5, len(failures))
        text += f"; {shown}" + (f" (+{more} more)" if more > 0 else "")
    return text[:MAX_MESSAGE]


#: Every condition type, in the order status lists them. ``AckIdentity`` appears only once
#: an ack's sender failed its identity check (docs/configrefresh.md).
CONDITION_TYPES = ("TargetsResolved", "SourcesReady", "Published", "AckIdentity", "Complete")


def render_conditions(
    snapshot: Snapshot, ph: Phase, previous: Sequence[Mapping[str, Any]] | None, now: datetime
) -> list[dict[str, Any]]:
    """Standard metav1.Condition list; lastTransitionTime only moves when status changes."""
    prev = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    wanted = dict(snapshot.conditions)
    if ph.final:
        wanted["Complete"] = Condition("Complete", "True", ph.value, summary(snapshot, ph))
    else:
        wanted["Complete"] = Condition("Complete", "False", "InProgress", summary(snapshot, ph))
    out = []
    for ctype in CONDITION_TYPES:
        cond = wanted.get(ctype)
        if cond is None:
            continue
        old = prev.get(ctype)
        since = now
        if (
            old is not None
            and old.get("status") == cond.status
            and old.get("observedGeneration") == (snapshot.generation)
        ):
            since = parse_time(old.get("lastTransitionTime")) or now
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message[:MAX_MESSAGE],
                "lastTransitionTime": fmt_time(since, seconds=True),
                "observedGeneration": snapshot.generation,
            }
        )
    return out


def render(
    snapshot: Snapshot, now: datetime, previous_conditions: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The full ``status`` body (for a merge patch of the status subresource)."""
    ph = phase(snapshot)
    c = count(snapshot)
    results, truncated = bounded_results(snapshot.results.values())
    skipped = [{"pod": p, "reason": r[:MAX_REASON]} for p, r in list(snapshot.skipped)[:MAX_SKIPPED]]
    status: dict[str, Any] = {
        "phase": ph.value,
        "message": summary(snapshot, ph),
        "observedGeneration": snapshot.generation,
        "startTime": fmt_time(snapshot.start_time, seconds=True),
        "completionTime": None,
        "counts": c.to_json(),
        "results": [r.to_json() for r in results],
        "resultsTruncated": truncated,
        "skipped": skipped,
        "conditions": render_conditions(snapshot, ph, previous_conditions, now),
    }
    if snapshot.event_id:
        status["eventId"] = snapshot.event_id
    if ph.final:
        status["completionTime"] = fmt_time(snapshot.completion_time or now, seconds=True)
    return status


def fmt_time(value: datetime, seconds: bool = False) -> str:
    """RFC 3339 in UTC with a ``Z``; ``seconds`` drops the fraction (metav1.Time)."""
    value = value.astimezone(UTC)
    if seconds:
        return value.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
