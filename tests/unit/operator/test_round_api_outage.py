"""A round whose target resolution meets an unreachable API server asks again until its
deadline instead of failing the user's refresh (chaos finding F7: one reset connection
while the round listed its pods ended it ``Failed (internal error in the operator)``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from refreshbus_operator import records, rounds
from refreshbus_operator import status as st
from refreshbus_operator.kube import ApiError
from refreshbus_wire import now


def a_round(deadline_seconds: int = 60, started_ago: float = 0.0) -> rounds.Round:
    engine = SimpleNamespace(config=SimpleNamespace(instance="op-0"))
    spec = {"sources": [{"configMap": {"name": "a"}}], "target": {"pods": ["p0"]},
            "deadlineSeconds": deadline_seconds}
    snap = st.Snapshot(generation=1, event_id="e1", start_time=now() - timedelta(seconds=started_ago))
    return rounds.Round(engine, records.ObjectRef("ns", "r", "uid"), 1, spec, snap)  # type: ignore[arg-type]


def failing_prepare(round_: rounds.Round, failures: list[BaseException]) -> list[int]:
    """Replace the round's API work: raise each of ``failures`` in turn, then succeed."""
    calls: list[int] = []

    async def prepare() -> bool:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return True

    round_._prepare = prepare  # type: ignore[method-assign]
    return calls


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "backoff", lambda *_: 0.0)


def test_a_reset_connection_or_a_5xx_is_asked_again_until_it_works() -> None:
    round_ = a_round()
    calls = failing_prepare(round_, [ConnectionResetError(104, "reset"), ApiError(503, "down", {})])
    assert asyncio.run(round_._prepare_despite_api_trouble()) is True
    assert len(calls) == 3


def test_a_real_answer_is_not_asked_again() -> None:
    round_ = a_round()
    calls = failing_prepare(round_, [ApiError(403, "Forbidden", {})])
    with pytest.raises(ApiError):
        asyncio.run(round_._prepare_despite_api_trouble())
    assert len(calls) == 1


def test_an_outage_past_the_deadline_ends_the_round_saying_so() -> None:
    round_ = a_round(deadline_seconds=1, started_ago=5)
    failing_prepare(round_, [ConnectionResetError(104, "reset")])
    aborted: list[tuple[str, str]] = []

    async def abort(text: str, reason: str) -> bool:
        aborted.append((reason, text))
        return False

    round_._abort = abort  # type: ignore[method-assign]
    assert asyncio.run(round_._prepare_despite_api_trouble()) is False
    ((reason, text),) = aborted
    assert reason == "APIUnavailable"
    assert "could not be reached before the deadline" in text
    condition: Any = round_.snapshot.conditions["TargetsResolved"]
    assert (condition.status, condition.reason) == ("False", "APIUnavailable")
