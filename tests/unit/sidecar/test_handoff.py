"""The hand-off between the connection thread and the worker, on its own (against a
stand-in for pika's connection; tests/integration/sidecar/test_handoff.py uses a real one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pika.exceptions
from refreshbus_sidecar.handoff import Handoff


class FakeConnection:
    """Queues callbacks like ``BlockingConnection.add_callback_threadsafe``; runs them in
    :meth:`turn`, on whichever thread calls it."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.closed = False

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        if self.closed:
            raise pika.exceptions.ConnectionWrongStateError("closed")
        self.callbacks.append(callback)

    def turn(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


def test_work_is_taken_in_submission_order() -> None:
    handoff: Handoff[int] = Handoff()
    for item in (1, 2, 3):
        handoff.submit(item)

    assert [handoff.take(0) for _ in range(4)] == [1, 2, 3, None]


def test_take_waits_for_work_submitted_from_another_thread() -> None:
    handoff: Handoff[str] = Handoff()
    threading.Timer(0.05, handoff.submit, args=("job",)).start()

    assert handoff.take(5) == "job"


def test_take_gives_up_after_its_timeout() -> None:
    handoff: Handoff[str] = Handoff()
    started = time.monotonic()

    assert handoff.take(0.1) is None
    assert time.monotonic() - started >= 0.1


def test_a_reply_runs_on_the_thread_that_turns_the_connection() -> None:
    handoff: Handoff[str] = Handoff()
    connection = FakeConnection()
    ran_on: list[str] = []
    worker = threading.Thread(
        target=lambda: handoff.reply(connection, lambda: ran_on.append(threading.current_thread().name)),
        name="worker")
    worker.start()
    worker.join()

    assert ran_on == []  # nothing runs on the worker
    connection.turn()
    assert ran_on == [threading.current_thread().name]


def test_a_reply_to_a_closed_connection_is_refused_and_never_runs() -> None:
    handoff: Handoff[str] = Handoff()
    connection = FakeConnection()
    connection.closed = True
    ran: list[bool] = []

    assert handoff.reply(connection, lambda: ran.append(True)) is False
    assert ran == []
