"""Start-up and clean-up: the engine (broker links, rounds) lives in ``memo.engine``."""

from __future__ import annotations

from typing import Any

import kopf

from refreshbus_operator import runtime


@kopf.on.startup(backoff=5)
async def start_engine(memo: kopf.Memo, **_: Any) -> None:
    await runtime.start(memo)


@kopf.on.cleanup()
async def stop_engine(memo: kopf.Memo, **_: Any) -> None:
    await runtime.stop(memo)


@kopf.on.probe(id="broker")
def broker_probe(memo: kopf.Memo, **_: Any) -> dict[str, bool]:
    dead = runtime.dead_workers(memo)
    if dead:
        # kopf retries a probe that raises an ordinary error after a backoff, holding the
        # request (and every probe after it) open; a permanent error answers 500 at once.
        raise kopf.PermanentError(f"dead or stuck: {', '.join(dead)}")
    return runtime.probe(memo)
