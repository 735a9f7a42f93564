"""The sidecar RBAC reconciler against the real API server: correct, and quiet -- workload
events that change nothing cost no API request (Deployments are updated all the time)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from refreshbus_operator.sidecar_rbac import Reconciler, object_name
from refreshbus_support.operator_kube import kube_client
from refreshbus_wire import pods

pytestmark = pytest.mark.integration


def workload(cluster: Any, namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    }
    out = cluster.kubectl("apply", "-o", "json", "-f", "-", input=json.dumps(body))
    stored: dict[str, Any] = json.loads(out.stdout)
    return stored


def role_exists(cluster: Any, namespace: str, name: str) -> bool:
    role = object_name("Deployment", name)
    return cluster.kubectl("-n", namespace, "get", "role", role, check=False).returncode == 0


OPT_IN = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "app-config"}


def test_events_that_change_nothing_cost_no_request(cluster: Any, namespace: str) -> None:
    asyncio.run(events_that_change_nothing_cost_no_request(cluster, namespace))


async def events_that_change_nothing_cost_no_request(cluster: Any, namespace: str) -> None:
    async with kube_client(cluster.kubeconfig) as kube:
        reconciler = Reconciler(kube)

        plain = workload(cluster, namespace, "plain", {})
        assert await reconciler.handle("ADDED", plain) == "absent"
        assert kube.requests == 1  # one label-selected list of the namespace's sidecar Roles
        assert await reconciler.handle("MODIFIED", plain) == "unchanged"
        other = workload(cluster, namespace, "other", {})
        assert await reconciler.handle("ADDED", other) == "absent"
        assert kube.requests == 1

        web = workload(cluster, namespace, "web", OPT_IN)
        assert await reconciler.handle("ADDED", web) == "applied"
        assert role_exists(cluster, namespace, "web")
        before = kube.requests
        status_only = copy.deepcopy(web)
        status_only["status"] = {"observedGeneration": 1, "replicas": 3}
        assert await reconciler.handle("MODIFIED", status_only) == "unchanged"
        assert await reconciler.handle("MODIFIED", web) == "unchanged"
        assert kube.requests == before

        assert await reconciler.handle("DELETED", plain) == "absent"
        assert kube.requests == before
        assert await reconciler.handle("DELETED", web) == "removed"
        assert not role_exists(cluster, namespace, "web")


def test_a_fresh_reconciler_removes_roles_left_from_before(cluster: Any, namespace: str) -> None:
    """Opt-out while the operator was down: the restarted operator's first event removes the Role."""
    asyncio.run(a_fresh_reconciler_removes_roles_left_from_before(cluster, namespace))


async def a_fresh_reconciler_removes_roles_left_from_before(cluster: Any, namespace: str) -> None:
    async with kube_client(cluster.kubeconfig) as kube:
        web = workload(cluster, namespace, "web", OPT_IN)
        assert await Reconciler(kube).handle("ADDED", web) == "applied"
        opted_out = {pods.ANN_INJECT: "false", pods.ANN_CONFIGMAPS: "app-config"}
        web = workload(cluster, namespace, "web", opted_out)
        assert await Reconciler(kube).handle("ADDED", web) == "removed"
        assert not role_exists(cluster, namespace, "web")
