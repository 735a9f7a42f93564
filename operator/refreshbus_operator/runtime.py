"""Process-wide objects, created at kopf start-up and kept in ``memo``."""

from __future__ import annotations

import logging
from typing import Any

from refreshbus_operator import metrics
from refreshbus_operator.engine import Engine
from refreshbus_operator.kube import Kube, in_memo
from refreshbus_operator.settings import Config

log = logging.getLogger(__name__)


async def start(memo: Any) -> None:
    config: Config = memo["config"]
    engine = Engine(config, in_memo(memo))
    await engine.start()
    memo["engine"] = engine
    if config.metrics_port and not memo.get("metrics_started"):
        metrics.serve(config.metrics_port)
        memo["metrics_started"] = True
    if config.auto_refresh:
        from refreshbus_operator.autorefresh import AutoRefresher

        auto = AutoRefresher(config, in_memo(memo))
        await auto.start()
        memo["auto"] = auto
    log.info(
        "refreshbus operator started (namespaces: %s, brokers: %d)",
        ", ".join(config.namespaces) or "all",
        len(config.broker_urls),
    )


async def stop(memo: Any) -> None:
    auto = memo.get("auto")
    if auto is not None:
        await auto.stop()
    engine: Engine | None = memo.get("engine")
    if engine is not None:
        await engine.stop()
    shared: Kube | None = memo.get("kube")
    if shared is not None:
        await shared.aclose()


def probe(memo: Any) -> dict[str, bool]:
    engine: Engine | None = memo.get("engine")
    if engine is None:
        return {"publisher": False, "consumer": False}
    return {"publisher": engine.publisher.connected, "consumer": engine.consumer.connected}


def dead_workers(memo: Any) -> list[str]:
    """The internal workers that died or are stuck: liveness fails while any is listed."""
    dead: list[str] = []
    engine: Engine | None = memo.get("engine")
    if engine is not None:
        dead += engine.dead_workers()
    # AutoRefresher.alive() arrives with the async auto-refresh; until then it has no workers.
    alive = getattr(memo.get("auto"), "alive", None)
    if alive is not None and not alive():
        dead.append("auto-refresh")
    return dead
