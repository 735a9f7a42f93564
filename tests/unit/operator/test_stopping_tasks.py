"""Stopping the operator's worker tasks ends them, even when a cancel is lost on the way
(asyncio.wait_for on Python 3.11 can swallow one: a publisher then reconnected forever and
its stop() never returned)."""

from __future__ import annotations

import asyncio

import pytest
from refreshbus_operator import tasks
from refreshbus_operator.tasks import cancel_and_wait


async def swallows_first_cancel(cancels_seen: list[int]) -> None:
    """A worker loop whose first cancel is lost, as behind a racing asyncio.wait_for."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancels_seen.append(1)
            if len(cancels_seen) > 1:
                raise


def test_a_worker_that_lost_its_cancel_is_cancelled_until_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_AFTER", 0.05)

    async def main() -> list[int]:
        seen: list[int] = []
        task = asyncio.create_task(swallows_first_cancel(seen))
        await asyncio.sleep(0.02)
        await asyncio.wait_for(cancel_and_wait([task]), 5)
        assert task.cancelled()
        return seen

    assert asyncio.run(main()) == [1, 1]


def test_finished_failed_and_missing_tasks_are_stopped_without_error() -> None:
    async def fail() -> None:
        raise RuntimeError("died earlier")

    async def main() -> None:
        failed = asyncio.create_task(fail())
        done = asyncio.create_task(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        await cancel_and_wait([failed, done, None])
        assert failed.done()
        assert done.done()

    asyncio.run(main())
