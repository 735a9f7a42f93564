"""The operator's Kube client for tests that call operator code against the real API
server: one client per ``asyncio.run`` (its session belongs to that loop), always closed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from refreshbus_operator.kube import Kube, load_configuration


@contextlib.asynccontextmanager
async def kube_client(kubeconfig: str) -> AsyncIterator[Kube]:
    kube = Kube(load_configuration(kubeconfig))
    try:
        yield kube
    finally:
        await kube.aclose()
