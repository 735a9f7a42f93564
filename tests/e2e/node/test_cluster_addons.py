"""The test node's add-ons work as on kind (refreshbus_testenv.addons): pods resolve Service
names through CoreDNS, and a PersistentVolumeClaim without a class gets a volume from the
default StorageClass (local-path-provisioner), which goes away with the claim."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from refreshbus_testenv.addons import CLUSTER_DNS_IP, DEFAULT_STORAGE_CLASS
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.node import wait_for

pytestmark = pytest.mark.e2e

EXISTING = os.environ.get("REFRESHBUS_EXISTING_CLUSTER") == "1"
BUSYBOX = "docker.io/refreshbus/busybox:dev"


def _pod(name: str, command: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                 "command": ["sh", "-c", command], **spec.pop("container", {})}
            ],
            **spec,
        },
    }  # fmt: skip


def _apply(cluster: ControlPlane, ns: str, *objects: dict[str, Any]) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(listing))


def _phase(cluster: ControlPlane, ns: str, kind: str, name: str) -> str:
    return str((cluster.get_json("-n", ns, kind, name).get("status") or {}).get("phase", ""))


def _finished(cluster: ControlPlane, ns: str, pod: str) -> str:
    phase = _phase(cluster, ns, "pod", pod)
    return phase if phase in ("Succeeded", "Failed") else ""


def test_pods_resolve_service_names_through_cluster_dns(cluster: ControlPlane, namespace: str) -> None:
    """A client pod reaches a web server by its Service's short name, by its name in another
    namespace's form, and resolves the API server's Service: CoreDNS answers with
    ClusterIPs, kube-proxy routes them."""
    server = _pod("web", "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -f -p 8080 -h /www")
    server["spec"]["restartPolicy"] = "Always"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    _apply(cluster, namespace, server, service)
    cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", "pod/web", "--timeout=120s", timeout=130
    )
    client = _pod(
        "client",
        f"cat /etc/resolv.conf; wget -qO- http://web/ && wget -qO- http://web.{namespace}.svc.cluster.local/"
        " && nslookup kubernetes.default.svc.cluster.local",
    )
    _apply(cluster, namespace, client)
    wait_for(lambda: _finished(cluster, namespace, "client"), 120, "the client pod to finish")
    phase = _finished(cluster, namespace, "client")
    log = cluster.kubectl("-n", namespace, "logs", "client").stdout
    assert phase == "Succeeded", log
    assert f"nameserver {CLUSTER_DNS_IP}" in log
    assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in log
    assert log.count("hello-from-web") == 2, log
    kubernetes_ip = cluster.get_json("-n", "default", "service", "kubernetes")["spec"]["clusterIP"]
    assert kubernetes_ip in log.split("kubernetes.default.svc.cluster.local", 1)[1], log


def test_a_claim_without_a_class_is_bound_by_the_default_storage_class(
    cluster: ControlPlane, namespace: str
) -> None:
    """The PVC names no StorageClass: the default one provisions a local volume when the pod
    is scheduled (WaitForFirstConsumer); what the pod writes is in that volume; deleting
    the claim deletes the volume (reclaimPolicy Delete)."""
    classes = cluster.get_json("storageclass")["items"]
    default_class = "storageclass.kubernetes.io/is-default-class"
    defaults = [
        c["metadata"]["name"]
        for c in classes
        if (c["metadata"].get("annotations") or {}).get(default_class) == "true"
    ]
    assert defaults == [DEFAULT_STORAGE_CLASS]
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    }
    writer = _pod(
        "writer",
        "echo persisted > /data/file && cat /data/file",
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    )
    _apply(cluster, namespace, claim, writer)
    wait_for(lambda: _finished(cluster, namespace, "writer"), 180, "the writer pod to finish")
    phase = _finished(cluster, namespace, "writer")
    assert phase == "Succeeded", cluster.kubectl("-n", namespace, "describe", "pod", "writer").stdout
    assert _phase(cluster, namespace, "pvc", "data") == "Bound"
    pvc = cluster.get_json("-n", namespace, "pvc", "data")
    assert pvc["spec"]["storageClassName"] == DEFAULT_STORAGE_CLASS
    volume = cluster.get_json("pv", pvc["spec"]["volumeName"])
    path = Path((volume["spec"].get("hostPath") or volume["spec"]["local"])["path"])
    if not EXISTING:  # the volume is a directory of this machine
        assert (path / "file").read_text() == "persisted\n"

    cluster.kubectl("-n", namespace, "delete", "pod", "writer", "--wait=true", timeout=90)
    cluster.kubectl("-n", namespace, "delete", "pvc", "data", "--wait=true", timeout=90)
    wait_for(
        lambda: cluster.kubectl("get", "pv", volume["metadata"]["name"], check=False).returncode != 0,
        120,
        "the volume to be deleted with its claim",
    )
    if not EXISTING:
        assert not path.exists()
