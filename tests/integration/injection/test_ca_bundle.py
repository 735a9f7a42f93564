"""caBundle patching against the real API server, including a concurrent writer."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from refreshbus_operator.injection import certs
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.webhook import patch_ca_bundle, webhook_configuration
from refreshbus_operator.kube import Kube, load_client

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
    kube = Kube(load_client(cluster.kubeconfig))
    ca, _ = certs.make_ca()
    assert patch_ca_bundle(kube, mwc, ca) is True
    assert bundle_of(cluster, mwc) == ca
    assert patch_ca_bundle(kube, mwc, ca) is False
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
        super().__init__(load_client(cluster.kubeconfig))
        self.cluster, self.name, self.raced = cluster, name, False

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "PATCH" and not self.raced:
            self.raced = True
            self.cluster.kubectl("label", "mutatingwebhookconfiguration", self.name, "raced=yes")
        return super().request(method, path, *args, **kwargs)


def test_a_concurrent_write_is_not_lost_and_the_patch_is_retried(cluster: Any, mwc: str) -> None:
    kube = RacingKube(cluster, mwc)
    ca, _ = certs.make_ca()
    assert patch_ca_bundle(kube, mwc, ca) is True
    assert kube.raced
    assert kube.requests == 4  # GET, PATCH refused (stale resourceVersion), GET, PATCH
    stored = cluster.get_json("mutatingwebhookconfiguration", mwc)
    assert stored["metadata"]["labels"]["raced"] == "yes"
    assert bundle_of(cluster, mwc) == ca
