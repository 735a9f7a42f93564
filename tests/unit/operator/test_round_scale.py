"""What a round does per ack stays constant, whatever the number of targets: folding
thousands of acks must not rescan every target for each (it did: quadratic, seconds of
CPU at 5,000 targets on the event loop every ack waits on)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from refreshbus_operator import records, rounds
from refreshbus_operator import status as st
from refreshbus_wire import Ack, AckResult, new_id, now

N = 2000


def test_folding_acks_scans_the_targets_once_not_once_per_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = SimpleNamespace(config=SimpleNamespace(instance="op-0"), springbus=None)
    pods = [f"p{i:05d}" for i in range(N)]
    snap = st.Snapshot(generation=1, event_id=new_id(), start_time=now(), targets=frozenset(pods))
    round_ = rounds.Round(engine, records.ObjectRef("ns", "r", "uid"), 1, {}, snap)  # type: ignore[arg-type]
    scans = []
    real = st.pending_pods
    monkeypatch.setattr(st, "pending_pods", lambda s: scans.append(1) or real(s))
    for pod in pods:
        ack = Ack(id=new_id(), event_id=snap.event_id or "", namespace="ns", pod=pod, result=AckResult.OK,
                  received_at=now())
        assert round_.fold(ack, object()) == "folded"  # type: ignore[arg-type]
        assert round_.answered.is_set() == (pod == pods[-1])
    assert len(scans) <= 1


def test_bounded_results_keep_failures_first_and_the_count_left_out() -> None:
    at = now()
    results = [st.PodResult(f"p{i:04d}", st.Outcome.OK, at) for i in range(500)]
    results += [st.PodResult(f"f{i:04d}", st.Outcome.FAILED, at, reason="x") for i in range(3)]
    results += [st.PodResult("t0", st.Outcome.TIMEOUT, at)]
    shown, left_out = st.bounded_results(results, limit=10)
    assert [r.pod for r in shown] == ["f0000", "f0001", "f0002", "t0", *[f"p{i:04d}" for i in range(6)]]
    assert left_out == len(results) - 10


def test_the_acked_pods_go_into_the_round_annotation_at_most_every_interval() -> None:
    """It holds every acked pod: written at each status flush (every 0.2 s) it was a PATCH of
    thousands of names five times a second."""
    written: list[int] = []

    async def write_annotation(_round: object, record: dict[str, object]) -> None:
        written.append(len(record.get("acked") or {}))  # type: ignore[arg-type]

    async def main() -> None:
        engine = SimpleNamespace(config=SimpleNamespace(instance="op-0"), write_annotation=write_annotation)
        pods = [f"p{i:05d}" for i in range(N)]
        snap = st.Snapshot(generation=1, event_id=new_id(), start_time=now(), targets=frozenset(pods))
        round_ = rounds.Round(engine, records.ObjectRef("ns", "r", "uid"), 1, {}, snap)  # type: ignore[arg-type]
        for flush in range(10):  # ten flushes in a row, new acks before each
            for pod in pods[flush * 150:(flush + 1) * 150]:
                snap.results[pod] = st.PodResult(pod, st.Outcome.OK, now())
            await round_._maybe_annotate_acks()
        assert written == [150]
        assert not round_.dirty.is_set()
        await asyncio.wait_for(round_.dirty.wait(), rounds.ANNOTATE_INTERVAL + 5)  # a flush is due then
        await round_._maybe_annotate_acks()
        assert written == [150, 1500]

    asyncio.run(main())


def test_silent_pods_are_not_sent_the_event_again_while_acks_keep_coming() -> None:
    """A big round's acks arrive over seconds: pods not answered yet are queued behind the
    others, not lost. Re-publishing to them (thousands at 5,000 targets) doubled the work
    and made the round slower still. Once acks stop coming, the silent ones get it again."""
    config = SimpleNamespace(instance="op-0", renudge_initial=0.3, renudge_max=0.3)
    pods = [f"p{i:02d}" for i in range(50)]
    snap = st.Snapshot(generation=1, event_id=new_id(), start_time=now(), targets=frozenset(pods))
    round_ = rounds.Round(SimpleNamespace(config=config), records.ObjectRef("ns", "r", "uid"), 1,  # type: ignore[arg-type]
                          {"deadlineSeconds": 60}, snap)
    nudges: list[float] = []
    round_.nudge = lambda why="": nudges.append(time.monotonic())  # type: ignore[method-assign]

    async def main() -> float:
        waiting = asyncio.create_task(round_._await_answers())
        for pod in pods[:-1]:  # 49 acks over about a second, then silence
            snap.results[pod] = st.PodResult(pod, st.Outcome.OK, now())
            await asyncio.sleep(0.02)
        stopped = time.monotonic()
        while not nudges:
            await asyncio.sleep(0.01)
        snap.results[pods[-1]] = st.PodResult(pods[-1], st.Outcome.OK, now())
        round_.answered.set()
        await waiting
        return stopped

    stopped = asyncio.run(asyncio.wait_for(main(), 30))
    assert nudges
    assert all(at >= stopped for at in nudges), (nudges, stopped)
