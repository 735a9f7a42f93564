"""The release's life cycle on the real node (issue 11 §2), after every test that uses the
session's default install (conftest.py orders this file last):

- ``helm uninstall`` of that default install leaves only what the chart README says it keeps;
- ``helm upgrade`` from the previous release (nodekit.PREVIOUS_CHART_COMMIT: its chart, and
  its operator and sidecar built into ``refreshbus/{operator,sidecar}:prev``) to this one,
  with a round in flight;
- the existing-broker mode: ``broker.existingSecret`` (+ ``existingSidecarSecret``) pointing
  at RabbitMQ on the host (the node address), the embedded StatefulSet not deployed, a
  round through it surviving its restart.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from refreshbus_operator import sidecar_rbac
from refreshbus_support.nodekit import (
    BROKER,
    CHART,
    RELEASE,
    RELEASE_NS,
    broker_state,
    helm,
    install,
    json_config,
    local_images,
    pods,
    previous_release,
    refresh,
    served_version,
    set_config,
    uninstall,
    wait_cfr,
    wait_for,
)
from refreshbus_testenv import images
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).parent / "manifests"
OPERATOR = sidecar_rbac.MANAGED_BY["app.kubernetes.io/managed-by"]


def _versions(cluster: ControlPlane, ns: str, selector: str) -> dict[str, str]:
    return {p.name: served_version(p.ip) for p in pods(cluster, ns, selector)}


def _labelled(cluster: ControlPlane, selector: str) -> list[str]:
    """Every object of every listable kind, in every namespace, matching ``selector``."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    # Events and the API server's own bookkeeping are not the release's objects.
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io", "componentstatuses")]
    out = cluster.kubectl("get", ",".join(kinds), "-A", "-l", selector, "-o", "name", timeout=120)
    return sorted(out.stdout.split())


def test_helm_uninstall_leaves_only_the_documented_objects(cluster: ControlPlane, release: str) -> None:
    """After ``helm uninstall`` of the session's default install nothing of the release is
    left but what the chart README says it keeps: the ConfigRefresh CRD (with every
    ConfigRefresh the earlier tests made) and the broker's claim. Nor is anything the operator
    made at run time (the post-delete hook Job removes it): the broker Secret copy and the
    sidecar Role/RoleBinding of an injected workload, the webhook TLS Secret. The workload's
    pods keep running."""
    ns = _billing_namespace(cluster, "uninstall")
    made = f"app.kubernetes.io/managed-by={OPERATOR}"

    def made_in_ns() -> list[str]:
        out = cluster.kubectl("-n", ns, "get", "secret,role,rolebinding", "-l", made, "-o", "name").stdout
        return sorted(out.split())

    rbac = sidecar_rbac.object_name("Deployment", "billing")
    wait_for(lambda: made_in_ns() == sorted([f"secret/{RELEASE}-broker-sidecar",
             f"role.rbac.authorization.k8s.io/{rbac}", f"rolebinding.rbac.authorization.k8s.io/{rbac}"]),
             30, "the operator's objects for the injected workload")  # fmt: skip
    assert cluster.kubectl("-n", RELEASE_NS, "get", "secret", f"{RELEASE}-webhook-tls", "-o", "name").stdout
    running = {p.name for p in pods(cluster, ns, "app=billing")}
    refreshes = cluster.get_json("-A", "configrefresh")["items"]
    started = time.monotonic()
    helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "120s")
    took = time.monotonic() - started
    print(f"\n[e2e-node] helm uninstall (post-delete clean-up Job included) {took:.1f}s")
    wait_for(lambda: not cluster.get_json("-n", RELEASE_NS, "pods")["items"], 120, "the release's pods to go")
    left = _labelled(cluster, f"app.kubernetes.io/instance={RELEASE}")
    assert left == [
        "customresourcedefinition.apiextensions.k8s.io/configrefreshes.refreshbus.io",
        f"persistentvolumeclaim/data-{RELEASE}-rabbitmq-0",
    ], left
    assert len(cluster.get_json("-A", "configrefresh")["items"]) == len(refreshes)
    # Release records (ConfigMaps owned by their workload, issue 13) are kept, as documented.
    operator_made = _labelled(cluster, f"{made},app.kubernetes.io/component!=release")
    assert operator_made == [], operator_made
    tls = cluster.kubectl("-n", RELEASE_NS, "get", "secret", f"{RELEASE}-webhook-tls", check=False)
    assert "NotFound" in tls.stderr, tls.stdout + tls.stderr
    assert {p.name for p in pods(cluster, ns, "app=billing")} == running
    cluster.kubectl("-n", RELEASE_NS, "delete", "pvc", "-l", BROKER, "--wait=true", timeout=120)
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def _billing_namespace(cluster: ControlPlane, prefix: str) -> str:
    """A new namespace with targets.yaml's billing workload (2 pods) and ConfigMap, ready."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: cluster.kubectl("-n", ns, "get", "sa", "default", check=False).returncode == 0, 30,
             "default ServiceAccount")  # fmt: skip
    docs = [d for d in yaml.safe_load_all((MANIFESTS / "targets.yaml").read_text()) if d]
    billing = [d for d in docs if d["metadata"]["name"] in ("billing", "billing-config")]
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                     "items": billing}))  # fmt: skip
    cluster.kubectl("-n", ns, "rollout", "status", "deployment/billing", "--timeout=180s", timeout=200)
    return ns


@pytest.mark.timeout(900)
def test_helm_upgrade_from_the_previous_release_with_a_refresh_in_flight(
    cluster: ControlPlane, node_cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Pods injected by the previous release, a round waiting for their acks, then ``helm
    upgrade`` to this chart and these images: the round finishes (the new operator resumes
    it, its acks come from the previous sidecars), every target serves the new content, the
    broker keeps its generated passwords and its volume."""
    workdir = tmp_path_factory.mktemp("upgrade")
    previous = previous_release(workdir)
    if node_cluster.node is not None:
        started = time.monotonic()
        for component in ("operator", "sidecar"):
            node_cluster.node.import_image(images.build_python_component(component, previous, tag="prev"))
        node_cluster.timings["previous-images"] = time.monotonic() - started
    chart = previous / "charts" / "refreshbus"
    node_cluster.timings["helm-install-previous"] = install(cluster, local_images("prev"), workdir, chart)
    ns = _billing_namespace(cluster, "upgrade")
    before = broker_state(cluster)
    operators = {p.name for p in pods(cluster, RELEASE_NS, "app.kubernetes.io/component=operator")}
    set_config(cluster, ns, "billing-config", "config.json", json_config("billing", "upgrade"))
    name = refresh(cluster, ns, "billing-config", {"workload": {"kind": "Deployment", "name": "billing"}},
                   deadline=240)  # fmt: skip
    started = time.monotonic()
    helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS,
         "-f", str(_values_file(workdir)), "--wait", "--timeout", "240s", timeout=280)  # fmt: skip
    node_cluster.timings["helm-upgrade"] = time.monotonic() - started
    status = wait_cfr(cluster, ns, name, timeout=240)
    node_cluster.timings["upgrade-round"] = time.monotonic() - started
    assert status["phase"] == "Succeeded", status
    assert set(_versions(cluster, ns, "app=billing").values()) == {"upgrade"}
    after = broker_state(cluster)
    assert after["volume"] == before["volume"]
    assert after["passwords"] == before["passwords"]
    current = pods(cluster, RELEASE_NS, "app.kubernetes.io/component=operator")
    assert not operators & {p.name for p in current}, "the operator pods run the previous image still"
    print(f"\n[e2e-node] upgrade: broker pod replaced: {after['pod-uid'] != before['pod-uid']}")
    labels = cluster.get_json("-n", RELEASE_NS, "deployment", "refreshbus-operator")["metadata"]["labels"]
    assert labels["helm.sh/chart"] == f"refreshbus-{_chart_version()}"
    # A round after the upgrade, still to the previous sidecars: they lost the broker when the
    # upgrade replaced its pod and come back on their reconnect backoff (up to 30 s).
    set_config(cluster, ns, "billing-config", "config.json", json_config("billing", "upgraded"))
    name = refresh(cluster, ns, "billing-config", {"workload": {"kind": "Deployment", "name": "billing"}},
                   deadline=120)  # fmt: skip
    assert wait_cfr(cluster, ns, name, timeout=150)["phase"] == "Succeeded"
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    uninstall(cluster)


def _chart_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["version"])


def _values_file(workdir: Path) -> Path:
    path = workdir / "values-current.json"
    path.write_text(json.dumps(local_images()))
    return path


# -- the existing-broker mode -------------------------------------------------------------------


@pytest.fixture(scope="module")
def existing_release(
    node_cluster: Any, node_broker: Broker | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    if node_broker is None:
        pytest.skip("a broker outside the cluster is started only on the local node")
    cluster = node_cluster.plane
    cluster.kubectl("create", "namespace", RELEASE_NS, check=False)
    for name, key, user in (
        ("rb-broker", "operator-urls", "refreshbus-operator"),
        ("rb-broker-sidecar", "sidecar-urls", "refreshbus-sidecar"),
    ):
        cluster.kubectl("-n", RELEASE_NS, "create", "secret", "generic", name,
                        f"--from-literal={key}={node_broker.url(user)}")  # fmt: skip
    broker = {"existingSecret": "rb-broker", "existingSidecarSecret": "rb-broker-sidecar"}
    values = {**local_images(), "broker": broker}
    node_cluster.timings["helm-install-existing"] = install(cluster, values, tmp_path_factory.mktemp("helm"))
    yield node_broker
    uninstall(cluster)
    cluster.kubectl("-n", RELEASE_NS, "delete", "secret", "rb-broker", "rb-broker-sidecar", check=False)


@pytest.fixture(scope="module")
def billing(cluster: ControlPlane, existing_release: Broker) -> Iterator[str]:
    ns = _billing_namespace(cluster, "ext")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.timeout(600)  # its set-up installs the release
def test_existing_broker_mode_deploys_no_embedded_broker(
    cluster: ControlPlane, existing_release: Broker
) -> None:
    assert not cluster.get_json("-n", RELEASE_NS, "statefulsets")["items"]


def test_a_round_through_the_existing_broker_survives_its_restart(
    cluster: ControlPlane, billing: str, existing_release: Broker
) -> None:
    assert len(pods(cluster, billing, "app=billing")) == 2
    set_config(cluster, billing, "billing-config", "config.json", json_config("billing", "ext-1"))
    target = {"workload": {"kind": "Deployment", "name": "billing"}}
    name = refresh(cluster, billing, "billing-config", target)
    assert wait_cfr(cluster, billing, name)["phase"] == "Succeeded"

    set_config(cluster, billing, "billing-config", "config.json", json_config("billing", "ext-2"))
    existing_release.stop()
    try:
        name = refresh(cluster, billing, "billing-config", target, deadline=120)
    finally:
        existing_release.start()
    status = wait_cfr(cluster, billing, name, timeout=150)
    assert status["phase"] == "Succeeded", status
    assert set(_versions(cluster, billing, "app=billing").values()) == {"ext-2"}
