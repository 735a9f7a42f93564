"""Process-wide objects, created at kopf start-up and kept in ``memo``; what happens when
kopf peering pauses or resumes this replica; what liveness reports."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from refreshbus_operator import metrics
from refreshbus_operator.engine import Engine
from refreshbus_operator.kube import Kube, cfr_path, in_memo
from refreshbus_operator.pause import PeeringPause, peering_paths
from refreshbus_operator.settings import Config

if TYPE_CHECKING:
    from refreshbus_operator.autorefresh import AutoRefresher

log = logging.getLogger(__name__)


async def start(memo: Any) -> None:
    config: Config = memo["config"]
    kube = in_memo(memo)
    engine = Engine(config, kube)
    await engine.start()
    memo["engine"] = engine
    if config.metrics_port and not memo.get("metrics_started"):
        metrics.serve(config.metrics_port)
        memo["metrics_started"] = True
    auto = None
    if config.auto_refresh:
        from refreshbus_operator.autorefresh import AutoRefresher

        auto = AutoRefresher(config, kube)
        memo["auto"] = auto
    if config.peering_name is not None:
        # HA: nothing of ours runs until peering says this replica is the active one.
        engine.paused = True
        pause = PeeringPause(
            kube,
            peering_paths(config.peering_name, config.namespaces),
            config.peering_identity,
            config.effective_priority(),
            on_pause=lambda: paused(memo),
            on_resume=lambda: resumed(memo),
        )
        memo["pause"] = pause
        await pause.start()
    else:
        if auto is not None:
            await auto.start()
        if engine.springbus is not None:
            await engine.springbus.start()
    log.info(
        "refreshbus operator started (namespaces: %s, brokers: %d)",
        ", ".join(config.namespaces) or "all",
        len(config.broker_urls),
    )


async def stop(memo: Any) -> None:
    pause: PeeringPause | None = memo.get("pause")
    if pause is not None:
        await pause.stop()
    auto = memo.get("auto")
    if auto is not None:
        await auto.stop()
    engine: Engine | None = memo.get("engine")
    if engine is not None:
        if engine.springbus is not None:
            await engine.springbus.stop()
        await engine.stop()
    shared: Kube | None = memo.get("kube")
    if shared is not None:
        await shared.aclose()


async def paused(memo: Any) -> None:
    """A peer took over: stop our rounds without finishing them (the active replica resumes
    them from their round annotation; their unwritten acks go back to the queue) and stop
    auto-refresh (the active replica's creates the ConfigRefreshes)."""
    engine: Engine = memo["engine"]
    engine.paused = True
    if engine.springbus is not None:  # the active replica is the bus member
        await engine.springbus.stop()
    await engine.stop_rounds()
    auto = memo.get("auto")
    if auto is not None:
        await auto.stop()


async def resumed(memo: Any) -> None:
    """This replica is the active one (again): pick up every round in flight and watch."""
    engine: Engine = memo["engine"]
    config: Config = memo["config"]
    engine.paused = False
    auto = memo.get("auto")
    if auto is not None:
        await auto.start()
    if engine.springbus is not None:
        await engine.springbus.start()
    # kopf does not run its handlers again for objects it saw before the pause, and those it
    # ran while our view still said "paused" (start-up, unpause) were refused: list them all.
    for namespace in config.namespaces or (None,):
        listing = await in_memo(memo).aget(cfr_path(namespace))
        for body in listing.get("items") or ():
            outcome = engine.reconcile(body)
            if outcome in {"started", "resumed"}:
                log.info("after the pause: %s/%s %s", body["metadata"].get("namespace"),
                         body["metadata"]["name"], outcome)


def probe(memo: Any) -> dict[str, bool]:
    engine: Engine | None = memo.get("engine")
    pause: PeeringPause | None = memo.get("pause")
    if engine is None:
        return {"publisher": False, "consumer": False}
    report = {"publisher": engine.publisher.connected, "consumer": engine.consumer.connected}
    if pause is not None:
        report["paused"] = pause.paused
    if engine.springbus is not None and engine.springbus.running:
        report["springBus"] = engine.springbus.connected
    return report


def dead_workers(memo: Any) -> list[str]:
    """The internal workers that died or are stuck: liveness fails while any is listed."""
    dead: list[str] = []
    engine: Engine | None = memo.get("engine")
    if engine is not None:
        dead += engine.dead_workers()
        if engine.springbus is not None and not engine.springbus.alive():
            dead.append("Spring bus bridge")
    pause: PeeringPause | None = memo.get("pause")
    if pause is not None and not pause.alive():
        dead.append("peering watch")
    auto: AutoRefresher | None = memo.get("auto")
    if auto is not None and not auto.alive():
        dead.append("auto-refresh")
    return dead
