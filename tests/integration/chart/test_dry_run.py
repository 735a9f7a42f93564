"""Every manifest the chart renders, for every value set, validated by the real API server
(server-side dry-run: schemas, CRDs incl. CEL, RBAC objects, webhook configuration,
StatefulSet claim templates...), and a real `helm install` / `upgrade` / `uninstall` against
it -- there is no kubelet, so nothing runs, but every object is created for real.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "refreshbus"
VALUE_SETS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
THIRD_PARTY_CRDS = Path(__file__).with_name("thirdparty-crds.yaml")


@pytest.fixture(scope="session")
def third_party_crds(cluster: Any) -> None:
    """cert-manager's and prometheus-operator's kinds, registered for real (stand-in CRDs)."""
    cluster.kubectl("apply", "--server-side", "-f", str(THIRD_PARTY_CRDS))
    for doc in yaml.safe_load_all(THIRD_PARTY_CRDS.read_text()):
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{doc['metadata']['name']}", "--timeout=30s"
        )


def server_dry_run(cluster: Any, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=helm",
        "-f", "-", input=yaml.safe_dump_all(docs), check=False,
    )  # fmt: skip


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_manifest_passes_server_side_dry_run(
    cluster: Any, namespace: str, render: Any, third_party_crds: None, value_set: str
) -> None:
    manifests = render(value_set, namespace=namespace, include_crds=True)
    crds = [m for m in manifests if m["kind"] == "CustomResourceDefinition"]
    rest = [m for m in manifests if m["kind"] != "CustomResourceDefinition"]
    # Namespaces named in values (operator.watchNamespaces) must exist for their KopfPeerings.
    for ns in {m["metadata"].get("namespace") for m in rest} - {None, namespace}:
        cluster.kubectl("create", "namespace", ns, check=False)
    # CRDs first (Helm's crds/ folder and the templated ConfigRefresh CRD) ...
    if crds:
        proc = server_dry_run(cluster, crds)
        assert proc.returncode == 0, proc.stderr
    # ... then everything else, each namespaced object in the release namespace.
    proc = server_dry_run(cluster, rest)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == len(rest), proc.stdout
    assert all("(server dry run)" in line for line in lines), proc.stdout
    for m in rest:
        if m["kind"] not in {
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "ClusterKopfPeering",
            "KopfPeering",
        }:
            assert m["metadata"]["namespace"] == namespace, m["metadata"]["name"]


def install_dry_run(helm: Path, cluster: Any, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`helm install --dry-run=server`: rendered with lookups against the real API server."""
    return subprocess.run(
        [str(helm), "install", "dry", str(CHART), "--namespace", namespace, "--kubeconfig",
         cluster.kubeconfig, "--dry-run=server", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_notes_tell_the_user_what_to_do_next(helm: Path, cluster: Any, namespace: str) -> None:
    # crds.install=false: the test cluster's CRD was applied from crds/, not by Helm (Helm
    # refuses to adopt it; README.md says how to hand it over).
    proc = install_dry_run(helm, cluster, namespace, "--set", "crds.install=false")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout[proc.stdout.index("NOTES:") :]
    assert 'refreshbus.io/inject": "true"' in notes
    assert "kubectl apply -f refresh.yaml" in notes
    assert "kubectl get cfr" in notes
    assert f"kube-system, {namespace}" in notes  # the namespaces never injected
    assert "failurePolicy is Ignore" in notes


def test_a_bad_value_never_reaches_the_api_server(helm: Path, cluster: Any, namespace: str) -> None:
    proc = install_dry_run(helm, cluster, namespace, "--set-string", "operator.replicas=two")
    assert proc.returncode != 0
    assert "at '/operator/replicas': got string, want integer" in proc.stderr


@pytest.fixture
def release(helm: Path, cluster: Any, namespace: str) -> Iterator[tuple[str, list[str]]]:
    """A release name unique to this test, and the flags of a real install into the test
    cluster: the CRDs are already there (installed from crds/), and no webhook is
    registered (it would see the pods other tests create)."""
    name = f"rb{uuid.uuid4().hex[:6]}"
    flags = ["--namespace", namespace, "--kubeconfig", cluster.kubeconfig, "--skip-crds",
             "--set", "crds.install=false", "--set", "webhook.enabled=false"]  # fmt: skip
    yield name, flags
    subprocess.run(
        [str(helm), "uninstall", name, *flags[:4], "--wait=false"], capture_output=True, check=False
    )


def helm_run(helm: Path, *args: str) -> str:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_install_upgrade_keeps_generated_passwords_and_uninstall_cleans_up(
    helm: Path, cluster: Any, namespace: str, release: tuple[str, list[str]]
) -> None:
    name, flags = release
    out = helm_run(helm, "install", name, str(CHART), *flags)
    assert "STATUS: deployed" in out
    assert "kubectl get cfr" in out  # NOTES.txt

    def secret(suffix: str) -> dict[str, str]:
        data = cluster.get_json("-n", namespace, "secret", f"{name}-refreshbus-{suffix}")["data"]
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    users, sidecar_urls = secret("rabbitmq-users"), secret("broker-sidecar")
    definitions = json.loads(secret("rabbitmq-definitions")["definitions.json"])
    assert {u["name"]: u["password"] for u in definitions["users"]} == {
        "refreshbus-operator": users["operator-password"],
        "refreshbus-sidecar": users["sidecar-password"],
    }
    assert (
        f":{users['sidecar-password']}@{name}-refreshbus-rabbitmq.{namespace}.svc:5672/"
        in sidecar_urls["urls"]
    )
    sts = cluster.get_json("-n", namespace, "statefulset", f"{name}-refreshbus-rabbitmq")
    checksum = sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    cluster.get_json("clusterkopfpeering", f"{name}-refreshbus")

    # Upgrade (a value change): the generated passwords survive, so nothing restarts for them.
    helm_run(helm, "upgrade", name, str(CHART), *flags, "--set", "operator.verbose=true")
    assert secret("rabbitmq-users") == users
    assert secret("broker-sidecar") == sidecar_urls
    sts = cluster.get_json("-n", namespace, "statefulset", f"{name}-refreshbus-rabbitmq")
    assert sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == checksum
    deploy = cluster.get_json("-n", namespace, "deployment", f"{name}-refreshbus-operator")
    assert "--verbose" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]

    helm_run(helm, "uninstall", name, *flags[:4], "--wait=false")
    selector = f"app.kubernetes.io/instance={name}"
    left = cluster.kubectl(
        "get", "clusterrole,clusterrolebinding,clusterkopfpeering", "-l", selector, "-o", "name"
    ).stdout  # fmt: skip
    assert left.strip() == ""
    left = cluster.kubectl(
        "-n", namespace, "get", "all,secret,configmap,serviceaccount,pdb", "-l", selector, "-o", "name"
    ).stdout  # fmt: skip
    assert left.strip() == ""
