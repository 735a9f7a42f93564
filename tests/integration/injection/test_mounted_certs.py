"""cert-manager style TLS (REFRESHBUS_INJECTION_MANAGE_TLS=false): the certificate files
are mounted into the cert dir and the caBundle injected by someone else; the webhook
serves them and picks up a renewed pair without a restart."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from injharness import TEST_LABEL, Injector, served_certificate
from refreshbus_operator.injection import certs
from refreshbus_operator.injection.webhook import patch_ca_bundle
from refreshbus_support.operator_kube import kube_client
from refreshbus_wire import pods

pytestmark = pytest.mark.integration


def write_pair(directory: Path, bundle: certs.Bundle) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.key").write_bytes(bundle.tls_key)
    (directory / "tls.crt").write_bytes(bundle.tls_crt)


def inject_ca(cluster: Any, name: str, ca: bytes) -> None:
    """What cert-manager's CA injector does."""

    async def patch() -> None:
        async with kube_client(cluster.kubeconfig) as kube:
            await patch_ca_bundle(kube, name, ca)

    asyncio.run(patch())


@pytest.fixture
def mounted(cluster: Any, tmp_path: Path) -> Iterator[Injector]:
    operator_ns = f"rb-sys-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", operator_ns)
    first = certs.new_bundle(["127.0.0.1"], 30)
    write_pair(tmp_path / "certs", first)
    inj = Injector(
        cluster,
        tmp_path,
        operator_ns,
        env={"REFRESHBUS_INJECTION_MANAGE_TLS": "false"},
        ca_override=first.ca_crt,
    )
    try:
        inj.register()
        inject_ca(cluster, inj.mwc_name, first.ca_crt)
        inj.start()
        yield inj
    finally:
        inj.stop()
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", inj.mwc_name, "--ignore-not-found", check=False
        )
        cluster.kubectl("delete", "namespace", operator_ns, "--wait=false", check=False)


def injected_pod(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web-config"},
        },
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
    }
    out = cluster.kubectl("-n", namespace, "create", "-o", "json", "-f", "-", input=json.dumps(body))
    stored: dict[str, Any] = json.loads(out.stdout)
    return stored


def test_mounted_certificates_are_served_and_reloaded(
    cluster: Any, namespace: str, mounted: Injector, tmp_path: Path
) -> None:
    cluster.kubectl("label", "namespace", namespace, f"{TEST_LABEL}={mounted.session}")
    cluster.kubectl("-n", namespace, "create", "configmap", "web-config", "--from-literal=a=b")
    assert (
        injected_pod(cluster, namespace, "one")["spec"]["initContainers"][0]["name"] == pods.SIDECAR_CONTAINER
    )
    # The operator wrote no Secret of its own.
    secret = cluster.kubectl(
        "-n", mounted.operator_namespace, "get", "secret", mounted.config.tls_secret, check=False
    )
    assert secret.returncode != 0

    # cert-manager renews (here: a new CA too) and its CA injector updates the caBundle.
    second = certs.new_bundle(["127.0.0.1"], 30)
    write_pair(tmp_path / "certs", second)
    inject_ca(cluster, mounted.mwc_name, second.ca_crt)
    deadline = time.monotonic() + 20
    while not certs.signed_by(served_certificate(mounted.port), second.ca_crt):
        assert time.monotonic() < deadline, "the renewed certificate was not picked up"
        time.sleep(0.3)
    assert (
        injected_pod(cluster, namespace, "two")["spec"]["initContainers"][0]["name"] == pods.SIDECAR_CONTAINER
    )
