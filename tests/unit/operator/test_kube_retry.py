"""Which failed requests the Kubernetes client asks again, against a real local HTTP server that
answers what the test scripts (the API server itself cannot be made to answer 429 or 503 on
demand; connection failures are tested against it in test_kube_client_retry.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import kubernetes
import pytest
from aiohttp import web
from refreshbus_operator import settings
from refreshbus_operator.kube import ApiError, Kube, in_memo

Script = list[tuple[int, dict[str, str]]]


@asynccontextmanager
async def scripted_api(script: Script) -> AsyncIterator[tuple[Kube, list[str]]]:
    """A server answering each request with the next (status, headers) of ``script`` (the
    last one repeats), and a Kube pointed at it. Yields the Kube and the methods it saw."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.method)
        status, headers = script[min(len(seen), len(script)) - 1]
        return web.json_response({"kind": "Status", "message": f"answer {len(seen)}"}, status=status,
                                 headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}", api_key={})
    kube = Kube(configuration, retry_timeout=10.0)
    try:
        yield kube, seen
    finally:
        await kube.aclose()
        await runner.cleanup()


def run(script: Script, call: Callable[[Kube], object]) -> tuple[object, list[str], float]:
    async def scenario() -> tuple[object, list[str], float]:
        async with scripted_api(script) as (kube, seen):
            started = time.monotonic()
            try:
                result: object = await call(kube)  # type: ignore[misc]
            except ApiError as exc:
                result = exc
            return result, seen, time.monotonic() - started

    return asyncio.run(scenario())


def test_a_read_is_retried_on_5xx_and_after_429s_retry_after() -> None:
    script: Script = [(503, {}), (429, {"Retry-After": "1"}), (200, {})]
    result, seen, took = run(script, lambda k: k.aget("/api/v1/pods"))
    assert isinstance(result, dict)
    assert result["message"] == "answer 3"
    assert seen == ["GET"] * 3
    assert took >= 0.9, "Retry-After: 1 was not honoured"


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_a_real_answer_is_final(status: int) -> None:
    result, seen, _ = run([(status, {}), (200, {})], lambda k: k.aget_metadata("/api/v1/secrets/x"))
    assert isinstance(result, ApiError)
    assert result.status == status
    assert seen == ["GET"]


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
def test_writes_are_not_retried(method: str) -> None:
    result, seen, _ = run([(503, {}), (200, {})], lambda k: k.arequest(method, "/x", body={}))
    assert isinstance(result, ApiError)
    assert result.status == 503
    assert seen == [method]


def test_the_retry_budget_comes_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    # $KUBECONFIG is read when the kubernetes package is imported, hence the module global.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    config = settings.from_env({"REFRESHBUS_OPERATOR_API_RETRY_TIMEOUT": "7.5"}, metrics_port=0)
    assert config.api_retry_timeout == 7.5
    memo = {"config": config, "kube": None}

    async def build() -> float:
        kube = in_memo(memo)
        await kube.aclose()
        return kube.retry_timeout

    assert asyncio.run(build()) == 7.5
    with pytest.raises(ValueError, match="API_RETRY_TIMEOUT"):
        settings.from_env({"REFRESHBUS_OPERATOR_API_RETRY_TIMEOUT": "-1"})
