"""The injection side of the operator works with exactly the rules in
refreshbus_operator.injection.permissions (the chart's ClusterRole must include them):
the kopf handlers run as a ServiceAccount holding only those, serve the webhook,
patch the caBundle, and create the sidecar Role."""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.permissions import cluster_rules
from refreshbus_operator.sidecar_rbac import object_name
from refreshbus_wire import pods

sys.path.insert(0, str(Path(__file__).parents[1] / "injection"))

from injharness import TEST_LABEL, Injector  # tests/integration/injection/injharness.py

pytestmark = pytest.mark.integration


@pytest.fixture
def operator_identity(cluster: Any) -> Iterator[tuple[str, str]]:
    """(operator namespace, kubeconfig of its ServiceAccount bound to cluster_rules only)."""
    ns = f"rb-sys-{uuid.uuid4().hex[:8]}"
    name = f"refreshbus-injection-test-{ns}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("-n", ns, "create", "serviceaccount", "refreshbus-operator")
    cluster.kubectl(
        "-n", ns, "create", "secret", "generic", "refreshbus-broker", "--from-literal=urls=amqp://x"
    )
    yield ns, name
    cluster.kubectl("delete", "clusterrole,clusterrolebinding", name, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_injection_works_with_only_the_documented_permissions(
    cluster: Any, namespace: str, operator_identity: tuple[str, str], tmp_path: Path
) -> None:
    operator_ns, role_name = operator_identity
    inj = Injector(cluster, tmp_path, operator_ns, mode="kopf")
    config = InjectionConfig(webhook_configuration=inj.mwc_name, tls_secret=inj.config.tls_secret)
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role_name},
                "rules": cluster_rules(config),
            }
        ),
    )
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        role_name,
        f"--clusterrole={role_name}",
        f"--serviceaccount={operator_ns}:refreshbus-operator",
    )
    token = cluster.kubectl(
        "-n", operator_ns, "create", "token", "refreshbus-operator", "--duration=1h"
    ).stdout.strip()
    # The kopf process sees the cluster as the operator's ServiceAccount only.
    inj.kubeconfig = cluster.kubeconfig_for_token(token, f"operator-{operator_ns}")
    inj.watch_namespace = namespace
    try:
        inj.register()
        inj.start()
        cluster.kubectl("label", "namespace", namespace, f"{TEST_LABEL}={inj.session}")
        cluster.kubectl("-n", namespace, "create", "configmap", "web-config", "--from-literal=a=b")
        cluster.kubectl("-n", namespace, "create", "serviceaccount", "web")
        template = {
            "metadata": {
                "labels": {"app": "web"},
                "annotations": {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web-config"},
            },
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "nginx:1.27"}]},
        }
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": namespace},
                    "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template},
                }
            ),
        )
        role = object_name("Deployment", "web")
        deadline = time.monotonic() + 30
        while cluster.kubectl("-n", namespace, "get", "rolebinding", role, check=False).returncode != 0:
            assert time.monotonic() < deadline, inj.log.read_text()[-3000:]
            time.sleep(0.2)
        assert cluster.get_json("-n", namespace, "secret", "refreshbus-broker")["data"]
        # The API server calls the webhook, which GETs the namespace and the ConfigMap as the SA.
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-1", **template["metadata"]},
            "spec": template["spec"],
        }
        out = cluster.kubectl("-n", namespace, "create", "-o", "json", "-f", "-", input=json.dumps(pod))
        assert json.loads(out.stdout)["spec"]["initContainers"][0]["name"] == pods.SIDECAR_CONTAINER
        # Rotated broker credentials reach the copy when the operator restarts (update by name).
        rotated = cluster.get_json("-n", operator_ns, "secret", "refreshbus-broker")
        rotated["data"] = {"urls": base64.b64encode(b"amqp://rotated").decode()}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(rotated))
        inj.stop()
        inj.start()
        deadline = time.monotonic() + 30
        while cluster.get_json("-n", namespace, "secret", "refreshbus-broker")["data"] != rotated["data"]:
            assert time.monotonic() < deadline, inj.log.read_text()[-3000:]
            time.sleep(0.2)
        assert "Forbidden" not in inj.log.read_text()
        assert "forbidden" not in inj.log.read_text()
    finally:
        inj.stop()
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", inj.mwc_name, "--ignore-not-found", check=False
        )
