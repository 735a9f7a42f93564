"""The operator's async Kubernetes client against the real API server, with the credentials
the official config loader gives it: a rotated in-cluster ServiceAccount token is picked up
without a restart, an exec plugin's token is used, a kubeconfig that yields no credentials
is refused with a clear error. Who the API server thinks we are comes from a
SelfSubjectReview."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from refreshbus_operator import kube as kube_module
from refreshbus_operator.kube import ConfigError, Kube, load_configuration

pytestmark = pytest.mark.integration


async def whoami(kube: Kube) -> str:
    review = await kube.apost(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    return str(review["status"]["userInfo"]["username"])


def sa_token(cluster: Any, namespace: str, name: str) -> str:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", name)
    return str(cluster.kubectl("-n", namespace, "create", "token", name, "--duration=1h").stdout.strip())


def test_a_rotated_in_cluster_token_is_picked_up(
    cluster: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet rewrites the projected token file; the in-cluster loader re-reads it once
    its minute is up, and the client asks the loader again (here every 0.2 s instead of
    60 s) -- so the next requests carry the new token, the session stays the same."""
    monkeypatch.setattr(kube_module, "CREDENTIALS_TTL", 0.2)
    token_file = tmp_path / "token"
    token_file.write_text(sa_token(cluster, namespace, "first"))
    configuration = kubernetes.client.Configuration()
    loader = kubernetes.config.incluster_config.InClusterConfigLoader(
        token_filename=str(token_file),
        cert_filename=str(cluster.pki / "ca.crt"),
        environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(cluster.api_port)},
    )
    loader.load_and_set(configuration)  # what load_incluster_config() does with the pod's paths

    async def scenario() -> tuple[str, str, float]:
        kube = Kube(configuration)
        try:
            before = await whoami(kube)
            token_file.write_text(sa_token(cluster, namespace, "second"))
            rotated = time.monotonic()
            while (after := await whoami(kube)) == before and time.monotonic() - rotated < 90:
                await asyncio.sleep(0.5)
            return before, after, time.monotonic() - rotated
        finally:
            await kube.aclose()

    before, after, took = asyncio.run(scenario())
    assert before == f"system:serviceaccount:{namespace}:first"
    assert after == f"system:serviceaccount:{namespace}:second", f"still {after} after {took:.0f}s"


def exec_kubeconfig(cluster: Any, tmp_path: Path, script: str) -> str:
    plugin = tmp_path / "credential-plugin"
    plugin.write_text(f"#!/bin/sh\n{script}\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    config = json.loads(Path(cluster.kubeconfig).read_text())
    config["users"] = [{"name": "admin", "user": {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin), "interactiveMode": "Never",
    }}}]
    path = tmp_path / "kubeconfig-exec"
    path.write_text(json.dumps(config))
    return str(path)


def test_an_exec_plugin_token_is_used(cluster: Any, namespace: str, tmp_path: Path) -> None:
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": sa_token(cluster, namespace, "plugged")},
    }
    kubeconfig = exec_kubeconfig(cluster, tmp_path, f"echo '{json.dumps(credential)}'")

    async def scenario() -> str:
        kube = Kube(load_configuration(kubeconfig))
        try:
            return await whoami(kube)
        finally:
            await kube.aclose()

    assert asyncio.run(scenario()) == f"system:serviceaccount:{namespace}:plugged"


def test_a_failing_exec_plugin_is_a_clear_error(cluster: Any, tmp_path: Path) -> None:
    """The loader only logs a failed plugin; without the check every request would be a 401."""
    kubeconfig = exec_kubeconfig(cluster, tmp_path, "echo 'no such account' >&2; exit 1")
    with pytest.raises(ConfigError, match=r"gave no credentials.*exec plugin"):
        load_configuration(kubeconfig)
