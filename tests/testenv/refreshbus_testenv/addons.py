"""The test node's cluster add-ons, deployed the way kubeadm and kind deploy them.

- **Cluster DNS**: CoreDNS (hack/build-cluster-addons.sh builds the version kubeadm pins for
  Kubernetes 1.34) from kubeadm's own manifests (``cmd/kubeadm/app/phases/addons/dns`` of
  the ``k8s.io/kubernetes`` module the node's binaries are built from): ConfigMap
  ``coredns`` with kubeadm's Corefile, Deployment ``coredns`` (two replicas) in
  ``kube-system``, Service ``kube-dns`` at :data:`CLUSTER_DNS_IP` (the kubelet's
  ``clusterDNS``), ServiceAccount and ``system:coredns`` RBAC.
- **Storage**: rancher's local-path-provisioner from the manifest in its own module
  (``deploy/local-path-storage.yaml``) with kind's changes: the StorageClass is called
  ``standard`` and is the default, volumes live on the node (here under the node's work
  directory, so :meth:`Node.destroy` removes them), and the helper pod runs a local image.

Images are built locally (refreshbus_testenv.images) and imported: nothing is pulled.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from refreshbus_testenv import images
from refreshbus_testenv.binaries import K8S_VERSION
from refreshbus_testenv.procs import InfraError

if TYPE_CHECKING:
    from refreshbus_testenv.node import Node

CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
DEFAULT_STORAGE_CLASS = "standard"
LOCAL_PATH_PROVISIONER_VERSION = "v0.0.30"
ADDON_IMAGES = ["coredns", "local-path-provisioner", "busybox"]
COREDNS_REPLICAS = 2
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane"


def _module_dir(module: str) -> Path:
    """The source of a Go module at a pinned version (from the module cache, downloaded
    through the Go module proxy if missing)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", module], capture_output=True, text=True, check=False, timeout=600
    )
    if proc.returncode != 0:
        raise InfraError(f"go mod download {module} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return Path(json.loads(proc.stdout)["Dir"])


def _go_string_constants(source: str) -> dict[str, str]:
    """``Name = `...``` raw-string constants of a Go file."""
    return dict(re.findall(r"(\w+)\s*=\s*`(.*?)`", source, flags=re.S))


def coredns_manifests() -> list[dict[str, Any]]:
    """kubeadm's CoreDNS objects, its Go templates filled in as ``kubeadm init`` does."""
    kubernetes = _module_dir(f"k8s.io/kubernetes@{K8S_VERSION}")
    source = kubernetes / "cmd/kubeadm/app/phases/addons/dns/manifests.go"
    templates = _go_string_constants(source.read_text())
    values = {
        "DNSIP": CLUSTER_DNS_IP,
        "DNSDomain": CLUSTER_DOMAIN,
        "DeploymentName": "coredns",
        "Replicas": str(COREDNS_REPLICAS),
        "ControlPlaneTaintKey": CONTROL_PLANE_TAINT,
        "Image": images.ref("coredns"),
    }
    objects = []
    for name in (
        "CoreDNSServiceAccount",
        "CoreDNSClusterRole",
        "CoreDNSClusterRoleBinding",
        "CoreDNSConfigMap",
        "CoreDNSDeployment",
        "CoreDNSService",
    ):
        text = templates[name]
        # The only conditional in these templates: `{{- if .DNSDomain }} ... {{- end }}` (set
        # here); `{{-` trims the whitespace before it, as Go's text/template does.
        text = re.sub(r"\s*\{\{- if \.DNSDomain \}\}(.*?)\s*\{\{- end \}\}", r"\1", text, flags=re.S)
        text = re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], text)
        if "{{" in text:
            raise InfraError(f"kubeadm's {name} template changed: unfilled {text[text.index('{{'):][:60]!r}")
        obj = yaml.safe_load(text)
        # kubeadm creates, then updates with resourceVersion "0"; `kubectl apply` creates.
        obj["metadata"].pop("resourceVersion", None)
        objects.append(obj)
    return objects


def local_path_manifests(storage_dir: Path) -> list[dict[str, Any]]:
    """local-path-provisioner's own manifest with kind's changes (see the module docstring)."""
    source = (
        _module_dir(f"github.com/rancher/local-path-provisioner@{LOCAL_PATH_PROVISIONER_VERSION}")
        / "deploy/local-path-storage.yaml"
    )
    objects = [o for o in yaml.safe_load_all(source.read_text()) if o]
    for obj in objects:
        kind = obj["kind"]
        if kind == "Deployment":
            container = obj["spec"]["template"]["spec"]["containers"][0]
            container["image"] = images.ref("local-path-provisioner")
            container["command"][0] = "/local-path-provisioner"
            obj["spec"]["template"]["spec"]["tolerations"] = [
                {"key": CONTROL_PLANE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
            ]
        elif kind == "StorageClass":
            obj["metadata"]["name"] = DEFAULT_STORAGE_CLASS
            obj["metadata"]["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
        elif kind == "ConfigMap":
            config = json.loads(obj["data"]["config.json"])
            for entry in config["nodePathMap"]:
                entry["paths"] = [str(storage_dir)]
            obj["data"]["config.json"] = json.dumps(config, indent=2)
            helper = yaml.safe_load(obj["data"]["helperPod.yaml"])
            helper["spec"]["containers"][0]["image"] = images.ref("busybox")
            obj["data"]["helperPod.yaml"] = yaml.safe_dump(helper)
    return objects


def install(node: Node, timeout: float = 180.0) -> None:
    """Import the add-ons' images, apply their objects and wait until they serve."""
    present = set(node.images())
    for name in ADDON_IMAGES:
        if images.ref(name) not in present:
            node.import_image(images.IMAGES[name]())
    storage_dir = node.workdir / "local-path-provisioner"
    storage_dir.mkdir(parents=True, exist_ok=True)
    items = coredns_manifests() + local_path_manifests(storage_dir)
    listing = {"apiVersion": "v1", "kind": "List", "items": items}
    node.plane.kubectl("apply", "-f", "-", input=json.dumps(listing))
    for ns, deployment in (("kube-system", "coredns"), ("local-path-storage", "local-path-provisioner")):
        node.plane.kubectl(
            "-n", ns, "rollout", "status", f"deployment/{deployment}", f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )  # fmt: skip
