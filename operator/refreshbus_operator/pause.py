"""Whether kopf peering has paused this replica, so our own workers pause with it.

kopf pauses a replica's handlers and watch streams when a live peer with a higher priority
(or another one with the same priority) shows up in the peering object, but it knows
nothing of our own asyncio tasks: refresh rounds and auto-refresh watches would keep
running. kopf keeps its pause state in a toggle private to ``kopf.spawn_tasks`` (no handler
kwarg, no public API exposes it), and its public signal for pausing, the stop reason of a
``@kopf.daemon``, needs an object to run on and puts a finalizer on it. So we read what kopf
reads: the peering object's ``status`` (identity -> priority, lifetime, lastseen), with
kopf's own rule (``kopf._core.engines.peering.process_peering_event``), polled every
``interval`` seconds. The format of that object is kopf's persisted, cross-version
contract between replicas, so it is the least fragile thing to depend on.

While peering is on, a replica starts paused and acts only once the peering object says
so, as kopf does (its peering toggle starts on).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from refreshbus_operator.kube import ApiError, Kube
from refreshbus_operator.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def peering_paths(name: str, namespaces: tuple[str, ...]) -> list[str]:
    """The peering objects kopf uses: one ClusterKopfPeering cluster-wide, else one
    KopfPeering per served namespace."""
    if not namespaces:
        return [f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}"]
    return [f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{name}" for ns in namespaces]


def blockers(status: Mapping[str, Any], identity: str, priority: int, at: datetime) -> list[str]:
    """The live peers that make kopf pause us: a higher priority, or the same one."""
    out: list[str] = []
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            lastseen = datetime.fromisoformat(str(info["lastseen"])) if info.get("lastseen") else at
            lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
            peer_priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=UTC)
        if lastseen + lifetime > at and peer_priority >= priority:
            out.append(peer)
    return sorted(out)


class PeeringPause:
    """Polls the peering objects; calls ``on_pause`` / ``on_resume`` on every change."""

    def __init__(
        self,
        kube: Kube,
        paths: list[str],
        identity: str,
        priority: int,
        on_pause: Callable[[], Awaitable[None]],
        on_resume: Callable[[], Awaitable[None]],
        interval: float = 1.0,
    ) -> None:
        self.kube = kube
        self.paths = paths
        self.identity = identity
        self.priority = priority
        self.on_pause = on_pause
        self.on_resume = on_resume
        self.interval = interval
        self.paused = True
        self._task: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="refreshbus-peering-pause")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _run(self) -> None:
        while True:
            found = await self._blockers()
            if found is not None and bool(found) != self.paused:
                await self._switch(found)
            await asyncio.sleep(self.interval)

    async def _switch(self, found: list[str]) -> None:
        """Pause or resume; a failed switch is retried at the next poll, never fatal: this
        task dying would leave the replica in whatever state it was (an API server restart
        is exactly when a resume's listing fails)."""
        if found:
            log.info(
                "paused by peering (in favour of %s): stopping rounds and auto-refresh", ", ".join(found)
            )
            self.paused = True
            try:
                await self.on_pause()
            except Exception:
                log.exception("pausing failed; trying again in %.1fs", self.interval)
                self.paused = False
            return
        log.info("active by peering: resuming rounds in flight and auto-refresh")
        self.paused = False
        try:
            await self.on_resume()
        except Exception:
            # Half resumed is worse than paused (a round list not read means rounds nobody
            # runs): undo it and resume again from the start at the next poll.
            log.exception("resuming failed; staying paused and trying again in %.1fs", self.interval)
            self.paused = True
            try:
                await self.on_pause()
            except Exception:
                log.exception("pausing after a failed resume failed too")

    async def _blockers(self) -> list[str] | None:
        """Who pauses us; ``None`` when the API cannot tell right now (keep the state)."""
        found: list[str] = []
        for path in self.paths:
            try:
                obj = await self.kube.aget(path)
            except ApiError as exc:
                if exc.not_found:  # kopf waits for the object to exist: so do we
                    found.append(f"(no peering object {path.rsplit('/', 1)[-1]})")
                    continue
                log.warning("peering state unknown (%s); keeping it", exc)
                return None
            except Exception as exc:
                log.warning("peering state unknown (%s); keeping it", exc)
                return None
            found += blockers(obj.get("status") or {}, self.identity, self.priority, datetime.now(UTC))
        return found
