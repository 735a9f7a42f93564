"""The chart's post-delete clean-up (templates/cleanup-hook.yaml), for real: its RBAC objects
are created on the API server and ``refreshbus-operator cleanup`` runs as a process with a
token of the hook's ServiceAccount, so it works with exactly the rights the chart grants.
(The Job itself runs on the real node: tests/e2e/node/test_release_lifecycle.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from refreshbus_operator import sidecar_rbac

pytestmark = pytest.mark.integration

TLS_LABELS = {"app.kubernetes.io/name": "refreshbus", "app.kubernetes.io/component": "sidecar-injector"}


def _apply(cluster: Any, items: list[dict[str, Any]]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def _secret(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace,
            "labels": labels}, "data": {"urls": "YW1xcDovL3g="}}  # fmt: skip


def _workload(namespace: str, name: str) -> dict[str, Any]:
    """What sidecar_rbac reads of a Deployment that opts in (no such Deployment exists here:
    no garbage collector runs on this API server)."""
    annotations = {"refreshbus.io/inject": "true", "refreshbus.io/configmaps": f"{name}-config"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"template": {"metadata": {"annotations": annotations}}}}  # fmt: skip


@pytest.fixture
def hook(cluster: Any, namespace: str, render: Any) -> Iterator[tuple[str, dict[str, str]]]:
    """(kubeconfig of the hook's ServiceAccount, the Job's ``--flag=value`` args), with the
    hook's ServiceAccount and RBAC really created (unique release name, removed afterwards)."""
    release = f"cln{uuid.uuid4().hex[:6]}"
    manifests = render("default", "--set", f"fullnameOverride={release}", namespace=namespace)
    hooks = [m for m in manifests if m["metadata"]["name"] == f"{release}-cleanup"]
    assert {m["kind"] for m in hooks} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                         "RoleBinding", "Job"}  # fmt: skip
    assert all(m["metadata"]["annotations"]["helm.sh/hook"] == "post-delete" for m in hooks)
    job = next(m for m in hooks if m["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "cleanup"
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"][1:])
    _apply(cluster, [m for m in hooks if m["kind"] != "Job"])
    token = cluster.kubectl("-n", namespace, "create", "token", f"{release}-cleanup").stdout.strip()
    try:
        yield cluster.kubeconfig_for_token(token, release), args
    finally:
        cluster.kubectl("delete", "clusterrole,clusterrolebinding", f"{release}-cleanup",
                        "--ignore-not-found", check=False)  # fmt: skip


def _cleanup(kubeconfig: str, args: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Job's command, as the Job runs it (the operator's console script)."""
    script = Path(sys.executable).with_name("refreshbus-operator")
    return subprocess.run(
        [str(script), "cleanup", *(f"--{k}={v}" for k, v in args.items()), "--wait=5"],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _exists(cluster: Any, namespace: str, kind: str, name: str) -> bool:
    proc = cluster.kubectl("-n", namespace, "get", kind, name, "-o", "name", check=False)
    return proc.returncode == 0


def test_cleanup_removes_what_the_operator_made_and_nothing_else(
    cluster: Any, namespace: str, hook: tuple[str, dict[str, str]]
) -> None:
    kubeconfig, args = hook
    release_ns, broker, tls = args["release-namespace"], args["broker-secret"], args["tls-secret"]
    assert release_ns == namespace
    apps, users = (f"cln-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for ns in (apps, users):
        cluster.kubectl("create", "namespace", ns)
    try:
        role, binding = sidecar_rbac.desired(_workload(apps, "web")) or ((), ())
        managed = {"app.kubernetes.io/managed-by": "refreshbus-operator"}
        _apply(cluster, [
            _secret(apps, broker, dict(sidecar_rbac.MANAGED_BY)),  # the operator's copy
            _secret(users, broker, {"team": "users"}),  # a user's Secret of the same name
            _secret(apps, "other", managed),  # not the broker Secret's name: never read
            _secret(release_ns, broker, {"app.kubernetes.io/managed-by": "Helm"}),  # the chart's own
            _secret(release_ns, tls, TLS_LABELS),  # the operator's webhook TLS Secret
            role, binding,
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",  # a user's Role
             "metadata": {"name": "mine", "namespace": apps, "labels": {"team": "apps"}}, "rules": []},
        ])  # fmt: skip

        proc = _cleanup(kubeconfig, args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # The hook removes every operator-made sidecar Role of the cluster: on the API server
        # the whole suite shares, earlier tests' workloads left some too.
        summary = (r"removed 1 broker Secret copies, [1-9]\d* sidecar Roles, [1-9]\d* sidecar RoleBindings, "
                   r"the webhook TLS")
        assert re.search(summary, proc.stdout), proc.stdout + proc.stderr
        assert "403" not in proc.stderr, proc.stderr
        name = sidecar_rbac.object_name("Deployment", "web")
        assert not _exists(cluster, apps, "secret", broker)
        assert not _exists(cluster, apps, "role", name)
        assert not _exists(cluster, apps, "rolebinding", name)
        assert not _exists(cluster, release_ns, "secret", tls)
        assert _exists(cluster, users, "secret", broker)
        assert _exists(cluster, apps, "secret", "other")
        assert _exists(cluster, release_ns, "secret", broker)
        assert _exists(cluster, apps, "role", "mine")

        again = _cleanup(kubeconfig, args)  # a repeated hook finds nothing left
        assert again.returncode == 0, again.stderr
        assert "removed 0 broker Secret copies, 0 sidecar Roles, 0 sidecar RoleBindings" in again.stdout
    finally:
        for ns in (apps, users):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_hook_may_not_read_any_other_secret(
    cluster: Any, namespace: str, hook: tuple[str, dict[str, str]]
) -> None:
    kubeconfig, args = hook

    def can_i(*what: str) -> bool:
        kubectl = [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}"]
        proc = subprocess.run([*kubectl, "auth", "can-i", *what], capture_output=True, text=True, check=False)
        return proc.stdout.strip() == "yes"

    assert can_i("delete", f"secrets/{args['broker-secret']}", "-n", "default")
    assert not can_i("list", "secrets", "-A")
    assert not can_i("get", "secrets/other", "-n", namespace)
    assert not can_i("delete", "configmaps", "-A")
    assert not can_i("create", "roles.rbac.authorization.k8s.io", "-n", namespace)
