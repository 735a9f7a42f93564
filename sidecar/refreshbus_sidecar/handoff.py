"""The one hand-off between the sidecar's two threads.

The connection thread owns the pika ``BlockingConnection`` and keeps turning it
(heartbeats, deliveries) however slow the API server or the app is; the worker thread
does the slow part (fetch, write, reload). Work goes to the worker through a queue.
Whatever must touch the connection afterwards (publish the ack, acknowledge the
delivery) goes back with pika's ``add_callback_threadsafe`` -- the only thread-safe
method of a ``BlockingConnection`` -- and runs on the connection's own thread the next
time it turns. Nothing else crosses between the two threads.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import pika.exceptions

T = TypeVar("T")


class Connection(Protocol):
    """What the hand-off needs of a connection (``pika.BlockingConnection`` has it)."""

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None: ...


class Handoff(Generic[T]):
    def __init__(self) -> None:
        self._work: queue.SimpleQueue[T] = queue.SimpleQueue()

    def submit(self, item: T) -> None:
        """Connection thread: give the worker one item of work (never blocks)."""
        self._work.put(item)

    def take(self, timeout: float | None) -> T | None:
        """Worker thread: the next item in submission order, or None after ``timeout``
        seconds without one (``None``: wait for as long as it takes)."""
        try:
            return self._work.get(timeout=timeout)
        except queue.Empty:
            return None

    def reply(self, connection: Connection, callback: Callable[[], None]) -> bool:
        """Worker thread: run ``callback`` on ``connection``'s thread.

        Returns False when that connection is already closed: the callback never runs,
        and the broker redelivers the delivery it would have settled. A callback added
        just before the connection closes is dropped the same way.
        """
        try:
            connection.add_callback_threadsafe(callback)
        except pika.exceptions.ConnectionWrongStateError:
            return False
        return True
