"""caBundle patching against the real API server, including a concurrent writer."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from injharness import Injector
from refreshbus_operator.injection import certs
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.webhook import patch_ca_bundle, webhook_configuration
from refreshbus_operator.kube import Kube, load_configuration
from refreshbus_support.operator_kube import kube_client

pytestmark = pytest.mark.integration


@pytest.fixture
def mwc(cluster: Any) -> Iterator[str]:
    config = InjectionConfig(webhook_configuration=f"rb-ca-{uuid.uuid4().hex[:8]}")
    body = webhook_configuration(config)  # service mode, as the chart renders it; no caBundle yet
    # Match nothing, so this configuration never affects other tests.
    body["webhooks"][0]["objectSelector"] = {"matchLabels": {"refreshbus-test/never": "true"}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    yield config.webhook_configuration
    cluster.kubectl("delete", "mutatingwebhookconfiguration", config.webhook_configuration, check=False)


def bundle_of(cluster: Any, name: str) -> bytes:
    mwc = cluster.get_json("mutatingwebhookconfiguration", name)
    return base64.b64decode(mwc["webhooks"][0]["clientConfig"].get("caBundle", ""))


def test_ca_bundle_is_set_once(cluster: Any, mwc: str) -> None:
    ca, _ = certs.make_ca()

    async def patch_twice() -> tuple[bool, bytes, bool]:
        async with kube_client(cluster.kubeconfig) as kube:
            first = await patch_ca_bundle(kube, mwc, ca)
            stored = bundle_of(cluster, mwc)
            return first, stored, await patch_ca_bundle(kube, mwc, ca)

    assert asyncio.run(patch_twice()) == (True, ca, False)
    svc = cluster.get_json("mutatingwebhookconfiguration", mwc)["webhooks"][0]["clientConfig"]["service"]
    assert svc == {
        "name": "refreshbus-webhook",
        "namespace": "refreshbus-system",
        "path": "/mutate-pods",
        "port": 443,
    }


class RacingKube(Kube):
    """A real client; before its first PATCH someone else (kubectl) changes the object."""

    def __init__(self, cluster: Any, name: str) -> None:
        super().__init__(load_configuration(cluster.kubeconfig))
        self.cluster, self.name, self.raced = cluster, name, False

    async def arequest(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "PATCH" and not self.raced:
            self.raced = True
            self.cluster.kubectl("label", "mutatingwebhookconfiguration", self.name, "raced=yes")
        return await super().arequest(method, path, *args, **kwargs)


def test_a_concurrent_write_is_not_lost_and_the_patch_is_retried(cluster: Any, mwc: str) -> None:
    kube = RacingKube(cluster, mwc)
    ca, _ = certs.make_ca()

    async def patch() -> bool:
        try:
            return await patch_ca_bundle(kube, mwc, ca)
        finally:
            await kube.aclose()

    assert asyncio.run(patch()) is True
    assert kube.raced
    assert kube.requests == 4  # GET, PATCH refused (stale resourceVersion), GET, PATCH
    stored = cluster.get_json("mutatingwebhookconfiguration", mwc)
    assert stored["metadata"]["labels"]["raced"] == "yes"
    assert bundle_of(cluster, mwc) == ca


def _wait_bundle(cluster: Any, name: str, ca: bytes | None, timeout: float) -> float:
    """Seconds until the configuration's caBundle is ``ca``; AssertionError after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        got = cluster.kubectl("get", "mutatingwebhookconfiguration", name, "-o", "json", check=False)
        if got.returncode == 0:
            bundle = json.loads(got.stdout)["webhooks"][0]["clientConfig"].get("caBundle", "")
            if base64.b64decode(bundle) == ca:
                return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"caBundle of {name} not restored within {timeout}s")


def test_operator_patches_the_ca_bundle_within_seconds_when_the_configuration_comes_late_or_is_wiped(
    cluster: Any, tmp_path: Path
) -> None:
    """The operator's own wiring (kopf handlers, default intervals: certificates hourly):
    started before the MutatingWebhookConfiguration exists (Helm creates it after the
    Deployment), it patches the caBundle seconds after the object appears; when the object
    is recreated without one (``helm upgrade --force``), it is put back within seconds."""
    operator_ns = f"rb-sys-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", operator_ns)
    inj = Injector(cluster, tmp_path, operator_ns, mode="kopf")
    try:
        inj.start()  # no configuration yet: serving, caBundle pending
        ca = inj.ca_pem()
        assert ca
        assert cluster.kubectl("get", "mutatingwebhookconfiguration", inj.mwc_name, check=False).returncode
        time.sleep(2)  # a couple of failed attempts
        inj.register()  # created without a caBundle, as Helm renders it
        late = _wait_bundle(cluster, inj.mwc_name, ca, timeout=40)

        cluster.kubectl("delete", "mutatingwebhookconfiguration", inj.mwc_name)
        inj.register()  # --force: deleted and recreated, caBundle gone
        assert bundle_of(cluster, inj.mwc_name) == b""
        wiped = _wait_bundle(cluster, inj.mwc_name, ca, timeout=30)
        log = inj.log.read_text()
        assert log.count("not found (yet)") == 1, log[-3000:]  # warned once, retried quietly
        assert late < 40
        assert wiped < 30
    finally:
        inj.stop()
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", inj.mwc_name, "--ignore-not-found", check=False
        )
        cluster.kubectl("delete", "namespace", operator_ns, "--wait=false", check=False)
