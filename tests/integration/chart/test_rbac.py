"""The chart's operator RBAC, for real: the rendered ClusterRole and ClusterRoleBinding are
created on the API server and the operator's ServiceAccount is impersonated. It can do what
the operator does -- including writing a sidecar Role that grants `get` on named Secrets,
without `escalate`/`bind` -- and nothing the README says it cannot.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def operator_sa(cluster: Any, namespace: str, render: Any) -> Iterator[tuple[str, str]]:
    """(``--as`` user of the operator's ServiceAccount, webhook configuration name), with the
    chart's ClusterRole/Binding really created (unique release name, removed afterwards)."""
    release = f"rbac{uuid.uuid4().hex[:6]}"
    manifests = render("default", "--set", f"fullnameOverride={release}", namespace=namespace)
    wanted = [m for m in manifests if m["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
              and m["metadata"]["name"] == f"{release}-operator"]  # fmt: skip
    assert len(wanted) == 3
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": wanted})
    )
    mwc = next(m for m in manifests if m["kind"] == "MutatingWebhookConfiguration")["metadata"]["name"]
    try:
        yield f"system:serviceaccount:{namespace}:{release}-operator", mwc
    finally:
        objects = ("clusterrole,clusterrolebinding", f"{release}-operator", "--ignore-not-found")
        cluster.kubectl("delete", *objects, check=False)


def can_i(cluster: Any, user: str, *args: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    return proc.stdout.strip() == "yes"


def test_operator_reads_what_it_needs_and_never_lists_secrets(
    cluster: Any, namespace: str, operator_sa: tuple[str, str]
) -> None:
    user, mwc = operator_sa
    allowed = [
        ("watch", "configrefreshes.refreshbus.io", "-A"),
        ("patch", "configrefreshes.refreshbus.io/status", "-n", namespace),
        ("list", "pods", "-A"),
        ("watch", "deployments.apps", "-A"),
        ("get", "secrets", "-n", namespace),
        ("create", "secrets", "-n", namespace),
        ("create", "roles.rbac.authorization.k8s.io", "-n", namespace),
        ("create", "configmaps", "-n", namespace),  # release records
        ("update", "configmaps/refreshbus-release-deployment-web", "-n", namespace),
        ("create", "events", "-n", namespace),
        ("patch", f"mutatingwebhookconfigurations/{mwc}"),
        ("patch", "clusterkopfpeerings.kopf.dev"),
        ("create", "tokenreviews.authentication.k8s.io"),  # ack identity
    ]
    denied = [
        ("list", "secrets", "-A"),
        ("watch", "secrets", "-n", namespace),
        ("update", "secrets/some-app-secret", "-n", namespace),
        ("delete", "secrets/some-app-secret", "-n", namespace),
        ("patch", "mutatingwebhookconfigurations/someone-elses"),
        ("create", "mutatingwebhookconfigurations"),
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", namespace),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("create", "pods", "-n", namespace),
        ("delete", "deployments.apps", "-n", namespace),
        ("impersonate", "serviceaccounts", "-n", namespace),
        ("create", "serviceaccounts/token", "-n", namespace),
    ]
    assert [a for a in allowed if not can_i(cluster, user, *a)] == []
    assert [d for d in denied if can_i(cluster, user, *d)] == []


def sidecar_role(namespace: str, name: str, rules: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                       "metadata": {"name": name, "namespace": namespace}, "rules": rules})  # fmt: skip


def test_operator_can_grant_sidecars_get_on_named_objects_without_escalate(
    cluster: Any, namespace: str, operator_sa: tuple[str, str]
) -> None:
    user, _ = operator_sa
    # What refreshbus_operator.sidecar_rbac writes: get on exactly the workload's sources.
    role = sidecar_role(namespace, "refreshbus-sidecar-deployment-web", [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["web-config"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["web-tls"]},
    ])  # fmt: skip
    cluster.kubectl("apply", f"--as={user}", "-f", "-", input=role)
    cluster.kubectl(
        "-n", namespace, "create", "rolebinding", "refreshbus-sidecar-deployment-web", f"--as={user}",
        "--role=refreshbus-sidecar-deployment-web", f"--serviceaccount={namespace}:default",
    )  # fmt: skip
    # The RBAC escalation check still applies: it cannot hand out more than it holds.
    greedy = sidecar_role(
        namespace, "greedy", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]
    )
    proc = cluster.kubectl("apply", f"--as={user}", "-f", "-", input=greedy, check=False)
    assert proc.returncode != 0
    assert "attempting to grant RBAC permissions not currently held" in proc.stderr
    # ... nor bind a role that holds more (no `bind` verb).
    lister = f"secret-lister-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "clusterrole", lister, "--verb=list,watch", "--resource=secrets")
    try:
        proc = cluster.kubectl(
            "-n", namespace, "create", "rolebinding", "lister", f"--as={user}", f"--clusterrole={lister}",
            f"--serviceaccount={namespace}:default", check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "forbidden" in proc.stderr
    finally:
        cluster.kubectl("delete", "clusterrole", lister, check=False)
