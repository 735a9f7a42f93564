"""Status folding: counts, phases, failures-first bounding, conditions, summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from refreshbus_operator import status as st

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def snap(targets: int, **results: str) -> st.Snapshot:
    s = st.Snapshot(
        generation=3, event_id="e1", start_time=T0, targets=frozenset(f"p{i}" for i in range(targets))
    )
    for pod, outcome in results.items():
        s.results[pod] = st.PodResult(
            pod=pod,
            outcome=st.Outcome(outcome),
            at=T0 + timedelta(seconds=1),
            reason="boom" if outcome == "failed" else None,
        )
    return s


def published(s: st.Snapshot) -> st.Snapshot:
    s.conditions["Published"] = st.Condition("Published", "True", "Published")
    return s


def test_counts_add_up():
    s = snap(5, p0="ok", p1="unchanged", p2="failed", p3="timeout")
    c = st.count(s)
    assert (c.targets, c.succeeded, c.unchanged, c.failed, c.pending, c.acked) == (5, 2, 1, 2, 1, 3)
    assert c.targets == c.succeeded + c.failed + c.pending
    assert c.acked == c.succeeded + (c.failed - c.timeouts)


def test_results_from_non_targets_are_not_counted():
    s = snap(1, p0="ok", intruder="ok")
    assert st.count(s).succeeded == 1


@pytest.mark.parametrize(
    ("results", "is_published", "phase"),
    [
        ({}, False, st.Phase.PENDING),
        ({}, True, st.Phase.IN_PROGRESS),
        ({"p0": "ok"}, True, st.Phase.IN_PROGRESS),
        ({"p0": "ok", "p1": "unchanged"}, True, st.Phase.SUCCEEDED),
        ({"p0": "ok", "p1": "failed"}, True, st.Phase.PARTIALLY_FAILED),
        ({"p0": "failed", "p1": "failed"}, True, st.Phase.FAILED),
        ({"p0": "ok", "p1": "timeout"}, True, st.Phase.TIMED_OUT),
    ],
)
def test_phase(results, is_published, phase):
    s = snap(2, **results)
    if is_published:
        published(s)
    assert st.phase(s) is phase
    assert st.phase(s).final == (phase in st.FINAL_PHASES)


def test_aborted_is_failed_with_its_message():
    s = snap(0)
    s.aborted = "ConfigMap 'x' not found"
    assert st.phase(s) is st.Phase.FAILED
    assert st.render(s, T0)["message"] == "ConfigMap 'x' not found"


def test_time_out_names_the_silent_pods():
    s = published(snap(3, p1="ok"))
    assert st.time_out(s, T0, 60) == ["p0", "p2"]
    assert st.phase(s) is st.Phase.TIMED_OUT
    assert s.results["p0"].reason == "no answer within 60s"


def test_results_are_bounded_failures_first_for_5000_pods():
    s = published(snap(5000))
    for i in range(5000):
        outcome = "failed" if i % 1000 == 7 else "ok"
        s.results[f"p{i}"] = st.PodResult(pod=f"p{i}", outcome=st.Outcome(outcome), at=T0, reason="x")
    body = st.render(s, T0)
    assert len(body["results"]) == st.MAX_RESULTS
    assert body["resultsTruncated"] == 4900
    assert [r["result"] for r in body["results"][:5]] == ["failed"] * 5
    assert body["results"][5]["result"] == "ok"
    assert body["counts"]["targets"] == 5000
    assert body["counts"]["failed"] == 5
    assert len(str(body)) < 64 * 1024  # a small object, whatever the number of pods


def test_skipped_is_bounded():
    s = snap(1)
    s.skipped = [(f"s{i}", "not running") for i in range(80)]
    body = st.render(s, T0)
    assert len(body["skipped"]) == st.MAX_SKIPPED
    assert body["counts"]["skipped"] == 80


def test_conditions_keep_transition_time_while_status_is_unchanged():
    s = published(snap(2, p0="ok"))
    first = st.render(s, T0)["conditions"]
    later = st.render(s, T0 + timedelta(minutes=5), first)["conditions"]
    assert [c["lastTransitionTime"] for c in later] == [c["lastTransitionTime"] for c in first]
    s.results["p1"] = st.PodResult(pod="p1", outcome=st.Outcome.OK, at=T0)
    done = {c["type"]: c for c in st.render(s, T0 + timedelta(minutes=6), later)["conditions"]}
    assert done["Complete"]["status"] == "True"
    assert done["Complete"]["reason"] == "Succeeded"
    assert done["Complete"]["lastTransitionTime"] == "2026-01-01T00:06:00Z"
    assert done["Published"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert all(c["observedGeneration"] == 3 for c in done.values())


def test_render_final_has_completion_time_and_summary():
    s = published(snap(3, p0="ok", p1="unchanged", p2="failed"))
    body = st.render(s, T0)
    assert body["phase"] == "PartiallyFailed"
    assert body["completionTime"] == "2026-01-01T00:00:00Z"
    assert body["message"] == "2 of 3 pod(s) run the new config (1 already had it); p2: boom"
    assert body["eventId"] == "e1"
    assert body["observedGeneration"] == 3


def test_in_progress_has_no_completion_time():
    body = st.render(published(snap(2, p0="ok")), T0)
    assert body["completionTime"] is None
    assert body["phase"] == "InProgress"


def test_pod_result_round_trip():
    r = st.PodResult(pod="p", outcome=st.Outcome.FAILED, at=T0, reason="x", config_hash="h", latency_ms=12)
    assert st.PodResult.from_json(r.to_json()) == r
    assert st.PodResult.from_json({"pod": "p", "result": "skipped"}) is None
