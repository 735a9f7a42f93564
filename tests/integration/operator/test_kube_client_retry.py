"""The operator's Kubernetes client asks a read again when the API connection fails on the way
(chaos finding F7: one reset connection while a round listed its pods failed the round for
good), and never when the API server really answered.

The API server is reached through a real TCP proxy (refreshbus_support.faultproxy) that
closes every connection, or swallows every request, while the test says so.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY
from refreshbus_operator.kube import ApiError, Kube, load_configuration, pods_path, source_path
from refreshbus_support.faultproxy import FaultProxy, Mode
from refreshbus_testenv.controlplane import ControlPlane

pytestmark = pytest.mark.integration

#: How long the API stays unreachable: several backoff steps, well within the retry budget.
OUTAGE = 3.0


@pytest.fixture
def kubeconfig(cluster: ControlPlane, api_proxy: FaultProxy, tmp_path: Path) -> str:
    return str(api_proxy.kubeconfig_via(cluster.kubeconfig, tmp_path / "kubeconfig-proxied"))


def retries(reason: str) -> float:
    return REGISTRY.get_sample_value(
        "refreshbus_operator_api_retries_total", {"verb": "get", "reason": reason}
    ) or 0.0


async def read_during_outage(
    kube: Kube, proxy: FaultProxy, namespace: str, mode: Mode
) -> tuple[object, float]:
    """List the namespace's pods while the proxy lets nothing through; it lets everything
    through again after OUTAGE seconds (from the event loop, while the read is under way)."""
    await kube.aget(pods_path(namespace))  # a pooled connection, as a running operator has
    proxy.set_mode(mode)
    proxy.cut()
    started = time.monotonic()
    asyncio.get_running_loop().call_later(OUTAGE, proxy.set_mode, "pass")
    pods = await kube.aget(pods_path(namespace))
    return pods, time.monotonic() - started


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_a_read_outlives_a_short_api_outage(
    kubeconfig: str, api_proxy: FaultProxy, namespace: str, mode: Mode
) -> None:
    """``reset``: every connection is closed at once (the F7 blip); ``blackhole``: requests
    are swallowed and the client's own timeout (1 s here) gives up on each attempt."""
    reason = "connection" if mode == "reset" else "timeout"
    before = retries(reason)

    async def scenario() -> tuple[object, float]:
        kube = Kube(load_configuration(kubeconfig), timeout=1.0)
        try:
            return await read_during_outage(kube, api_proxy, namespace, mode)
        finally:
            await kube.aclose()

    pods, took = asyncio.run(scenario())
    assert isinstance(pods, dict)
    assert pods["kind"] == "PodList"
    assert took >= OUTAGE - 0.5, f"answered after {took:.1f}s, during the outage?"
    assert took < OUTAGE + 10, f"took {took:.1f}s after a {OUTAGE}s outage"
    assert retries(reason) > before


def test_a_real_answer_is_not_retried(kubeconfig: str, namespace: str) -> None:
    before = sum(retries(r) for r in ("connection", "timeout", "throttled", "server_error"))

    async def scenario() -> ApiError:
        kube = Kube(load_configuration(kubeconfig))
        try:
            with pytest.raises(ApiError) as caught:
                await kube.aget(source_path(namespace, "ConfigMap", "missing"))
            return caught.value
        finally:
            await kube.aclose()

    error = asyncio.run(scenario())
    assert error.not_found
    assert sum(retries(r) for r in ("connection", "timeout", "throttled", "server_error")) == before


def test_retrying_is_bounded(kubeconfig: str, api_proxy: FaultProxy, namespace: str) -> None:
    """An API server that stays unreachable fails the read after ``retry_timeout``."""

    async def scenario() -> float:
        kube = Kube(load_configuration(kubeconfig), retry_timeout=2.0)
        try:
            api_proxy.set_mode("reset")
            started = time.monotonic()
            with pytest.raises((aiohttp.ClientError, OSError, TimeoutError)):
                await kube.aget(pods_path(namespace))
            return time.monotonic() - started
        finally:
            await kube.aclose()

    took = asyncio.run(scenario())
    # It kept asking for its whole budget, and gave up on that budget, not on the default
    # 30 s (the upper bound leaves room for a loaded machine: this is no benchmark).
    assert 2.0 <= took < 20, f"gave up after {took:.1f}s"
