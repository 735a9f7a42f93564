"""The operator's Kube client for tests that call operator code against the real API
server: one client per ``asyncio.run`` (its session belongs to that loop), always closed."""

from __future__ import annotations

import asyncio
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
        # A cancelled watch's connection is closed (not pooled), so the session no longer
        # tracks it while its TLS shutdown still runs on the loop; asyncio.run closing the
        # loop at once would leave that socket to the garbage collector (ResourceWarning).
        await asyncio.sleep(0.25)
