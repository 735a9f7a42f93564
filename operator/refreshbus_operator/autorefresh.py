"""Auto-refresh: not implemented yet (stub keeps the runtime importable)."""

from __future__ import annotations

from typing import Any


class AutoRefresher:
    def __init__(self, config: Any, kube: Any) -> None:
        self.config = config

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
