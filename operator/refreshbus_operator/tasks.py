"""Stopping the operator's own tasks for good.

On Python 3.11, ``asyncio.wait_for`` (aio-pika's ``connect`` uses it) returns the inner
result when it completes in the same loop iteration as an outer ``cancel()`` and the cancel
is lost (cpython gh-86296, fixed in 3.12). A worker loop that catches broker errors then goes
on reconnecting as if nothing happened, and ``task.cancel(); await task`` waits forever -- a
shutdown (or a pause) that never ends. So every stop goes through :func:`cancel_and_wait`,
which cancels again until the tasks have ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: How long to wait for cancelled tasks before cancelling the survivors again.
RECANCEL_AFTER = 1.0


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel ``tasks`` and return once every one of them has ended (their results and
    exceptions are consumed: a stopped task is not an error)."""
    every = [task for task in tasks if task is not None]
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
    await asyncio.gather(*every, return_exceptions=True)
