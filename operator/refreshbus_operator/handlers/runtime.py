"""Start-up and clean-up: the engine (broker links, rounds) lives in ``memo.engine``."""

from __future__ import annotations

from typing import Any

import kopf

from refreshbus_operator import runtime
from refreshbus_operator import settings as settings_module


@kopf.on.startup()
def configure_kopf(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's settings from the operator's :class:`~refreshbus_operator.settings.Config`.

    Registered here, not in the settings module: importing the settings (as the Kubernetes
    client does) must not register a handler in processes that run other handlers alone."""
    settings_module.apply_kopf_settings(settings, memo["config"])


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
