"""kopf's pause rule read from the peering object: who blocks this replica."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from refreshbus_operator.pause import PeeringPause, blockers, peering_paths

AT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float = 1.0, lifetime: int = 60) -> dict[str, object]:
    lastseen = (AT - timedelta(seconds=seen_ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": lastseen}


def test_a_live_higher_or_equal_priority_peer_blocks() -> None:
    status = {"me": peer(100), "high": peer(200), "low": peer(50), "same": peer(100)}
    assert blockers(status, "me", 100, AT) == ["high", "same"]


def test_dead_peers_and_ourselves_never_block() -> None:
    status = {"me": peer(100), "dead": peer(500, seen_ago=61), "high-but-expired": peer(300, 10, lifetime=5)}
    assert blockers(status, "me", 100, AT) == []
    assert blockers({"me": peer(900)}, "me", 100, AT) == []


def test_kopf_defaults_for_missing_fields_and_garbage_is_ignored() -> None:
    # kopf's Peer: priority 0, lifetime 60, lastseen "now" when absent.
    assert blockers({"other": {}}, "me", 0, AT) == ["other"]
    assert blockers({"other": {}}, "me", 1, AT) == []
    assert blockers({"bad": {"priority": "x"}, "worse": "nope"}, "me", 0, AT) == []


def test_peering_objects_kopf_uses() -> None:
    assert peering_paths("rb", ()) == ["/apis/kopf.dev/v1/clusterkopfpeerings/rb"]
    assert peering_paths("rb", ("a", "b")) == [
        "/apis/kopf.dev/v1/namespaces/a/kopfpeerings/rb",
        "/apis/kopf.dev/v1/namespaces/b/kopfpeerings/rb",
    ]


class _PeeringObject:
    """Stands in for the API server in this unit test: the peering object, no peers."""

    async def aget(self, path: str) -> dict[str, object]:
        return {"status": {}}


def test_a_failed_resume_is_undone_and_retried_and_the_watch_stays_alive() -> None:
    asyncio.run(_failed_resume_then_retry())


async def _failed_resume_then_retry() -> None:
    calls: list[str] = []

    async def on_pause() -> None:
        calls.append("pause")

    async def on_resume() -> None:
        calls.append("resume")
        if calls.count("resume") == 1:
            raise ConnectionResetError("API server restarting")

    watch = PeeringPause(
        _PeeringObject(),  # type: ignore[arg-type]
        ["/apis/kopf.dev/v1/clusterkopfpeerings/rb"],
        "me",
        100,
        on_pause=on_pause,
        on_resume=on_resume,
        interval=0.01,
    )
    await watch.start()
    try:
        for _ in range(500):
            if not watch.paused:
                break
            await asyncio.sleep(0.01)
        assert calls == ["resume", "pause", "resume"]
        assert not watch.paused
        assert watch.alive()
    finally:
        await watch.stop()
