"""A broken ack connection must lead to a nudge once the broker is back, however the
break was noticed -- otherwise events lost with a restarted broker leave pods stale until
the deadline."""

from __future__ import annotations

from typing import Any

import pytest
from refreshbus_operator.acks import AckConsumer


class FlakyLink:
    """Was connected; the broker closed it; the first reopen fails (broker still down)."""

    def __init__(self) -> None:
        self.connected = True
        self.is_open = False
        self.attempts = 0

    def open(self, prepare: Any) -> None:
        self.connected = False  # what Link.open does first: close() resets the mark
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("broker still down")
        self.connected = self.is_open = True


def test_a_link_that_broke_and_needed_two_attempts_to_reopen_still_nudges() -> None:
    consumer = AckConsumer(["amqp://u:p@127.0.0.1:1/"], deliver=lambda body, tag: None)
    consumer._link = FlakyLink()  # type: ignore[assignment]
    nudges: list[int] = []
    consumer.on_reconnect = lambda: nudges.append(1)

    with pytest.raises(ConnectionError):
        consumer._ensure()  # noticed broken; the broker is still down
    consumer._ensure()

    assert nudges == [1]


def test_the_first_connection_is_not_a_reconnect() -> None:
    consumer = AckConsumer(["amqp://u:p@127.0.0.1:1/"], deliver=lambda body, tag: None)
    link = FlakyLink()
    link.connected = False
    link.attempts = 1
    consumer._link = link  # type: ignore[assignment]
    nudges: list[int] = []
    consumer.on_reconnect = lambda: nudges.append(1)

    consumer._ensure()

    assert nudges == []
