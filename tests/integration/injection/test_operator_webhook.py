"""The webhook served from a kopf process through the operator's handlers
(handlers/injection.py with REFRESHBUS_INJECTION_ENABLED=true), not the standalone entry point."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from injharness import TEST_LABEL, Injector
from refreshbus_wire import pods

pytestmark = pytest.mark.integration


@pytest.fixture
def kopf_injector(cluster: Any, tmp_path: Path) -> Iterator[Injector]:
    operator_ns = f"rb-sys-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", operator_ns)
    inj = Injector(cluster, tmp_path, operator_ns, mode="kopf")
    try:
        inj.register()
        inj.start()
        yield inj
    finally:
        inj.stop()
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", inj.mwc_name, "--ignore-not-found", check=False
        )
        cluster.kubectl("delete", "namespace", operator_ns, "--wait=false", check=False)


def test_operator_process_serves_the_webhook_and_patches_the_ca_bundle(
    cluster: Any, namespace: str, kopf_injector: Injector
) -> None:
    mwc = cluster.get_json("mutatingwebhookconfiguration", kopf_injector.mwc_name)
    assert base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"]) == kopf_injector.ca_pem()
    cluster.kubectl("label", "namespace", namespace, f"{TEST_LABEL}={kopf_injector.session}")
    cluster.kubectl("-n", namespace, "create", "configmap", "web-config", "--from-literal=a=b")
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "annotations": {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web-config"},
        },
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
    }
    out = cluster.kubectl("-n", namespace, "create", "-o", "json", "-f", "-", input=json.dumps(body))
    stored = json.loads(out.stdout)
    assert stored["spec"]["initContainers"][0]["name"] == pods.SIDECAR_CONTAINER
    assert stored["metadata"]["annotations"][pods.ANN_INJECTED] == "true"
