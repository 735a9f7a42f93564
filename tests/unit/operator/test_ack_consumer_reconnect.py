"""A broken ack connection must lead to a nudge once the broker is back, however the
break was noticed -- otherwise events lost with a restarted broker leave pods stale until
the deadline."""

from __future__ import annotations

import asyncio
from typing import Any

from refreshbus_operator.acks import AckConsumer


class FlakyLink:
    """Was connected (``broke``) or never was; the first reopen fails (broker still down)."""

    def __init__(self, broke: bool) -> None:
        self.channel: object | None = object() if broke else None
        self.is_open = False
        self.lost = asyncio.Event()
        self.attempts = 0

    async def open(self, prepare: Any) -> None:
        self.channel = None  # what Link.open does first: close() forgets the old channel
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("broker still down")
        self.channel = object()
        self.is_open = True

    async def close(self) -> None:
        self.channel = None
        self.is_open = False


def nudges_after_two_attempts(broke: bool) -> list[int]:
    async def main() -> list[int]:
        consumer = AckConsumer(["amqp://u:p@127.0.0.1:1/"], deliver=lambda body, tag: None,
                               retry_initial=0.01, retry_max=0.01)
        link = FlakyLink(broke)
        consumer._link = link  # type: ignore[assignment]
        nudges: list[int] = []
        consumer.on_reconnect = lambda: nudges.append(1)
        consumer.set_active(True)
        await consumer.start()
        for _ in range(200):
            if link.is_open:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await consumer.stop()
        assert link.attempts == 2
        return nudges

    return asyncio.run(main())


def test_a_link_that_broke_and_needed_two_attempts_to_reopen_still_nudges() -> None:
    assert nudges_after_two_attempts(broke=True) == [1]


def test_the_first_connection_is_not_a_reconnect() -> None:
    assert nudges_after_two_attempts(broke=False) == []


def test_a_worker_that_stops_showing_progress_is_not_alive() -> None:
    """Liveness: a publisher or consumer task still running but silent past its limit is stuck."""
    from refreshbus_operator.publishing import Publisher

    async def main() -> None:
        publisher = Publisher(["amqp://u:p@127.0.0.1:1/"], retry_initial=0.01, retry_max=0.01)
        consumer = AckConsumer(["amqp://u:p@127.0.0.1:1/"], deliver=lambda body, tag: None)
        assert not publisher.alive()  # not started
        await publisher.start()
        await consumer.start()
        await asyncio.sleep(0.05)
        assert publisher.alive()
        assert consumer.alive()
        for worker in (publisher, consumer):
            worker.heartbeat.at -= worker.heartbeat.limit + 1  # as if stuck that long
            assert not worker.alive()
        await consumer.stop()
        await publisher.stop()
        assert not consumer.alive()

    asyncio.run(main())
