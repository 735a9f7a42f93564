"""The chart's three-node embedded RabbitMQ (``rabbitmq.replicas=3``) in real pods loses a
node while a refresh is in flight (issue 11 §3, in-cluster; the host version is
tests/e2e/test_broker_cluster.py).

A release of its own (conftest.py runs this file after test_release_lifecycle.py, which
uninstalls the session's default release): ``helm install`` with the local images and
``rabbitmq.replicas=3`` only. A workload of real Node.js apps whose reload takes 3 s, so the
round is in flight when the node goes: its sidecars have their event and are reloading, their
acks not yet sent. The node that crashes (``erlang:halt()``: no clean shutdown, peers see it
vanish, the kubelet restarts the container) is the one holding the most sidecar queues,
preferably also the ack queue's leader. Then: every sidecar consumes again on a live node,
every pod serves the new content having reloaded exactly once, the round reaches
``Succeeded`` with an ``ok`` from every pod (each pod's ack reached the operator: an ack
dropped with its connection is recovered by the operator's re-nudge, answered with the first
result), and the restarted node rejoins. Times are printed (docs/e2e-node.md), never asserted.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from refreshbus_support.nodekit import (
    BROKER,
    RELEASE,
    RELEASE_NS,
    apply,
    http_get,
    json_config,
    pods,
    refresh,
    set_config,
    wait_cfr,
    wait_for,
)
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.release import install, uninstall
from refreshbus_wire import routing

pytestmark = pytest.mark.e2e

NODES = 3
PODS = 3
APP = "ledger"


def _ctl(cluster: ControlPlane, pod: str, *args: str, check: bool = True) -> str:
    """``rabbitmqctl`` in a broker pod (its node name and cookie are in the container)."""
    proc = cluster.kubectl("-n", RELEASE_NS, "exec", pod, "-c", "rabbitmq", "--", "rabbitmqctl", *args,
                           check=check, timeout=60)  # fmt: skip
    return proc.stdout


def _broker_pods() -> list[str]:
    return [f"{RELEASE}-rabbitmq-{i}" for i in range(NODES)]


def _sidecar_queues(cluster: ControlPlane, live: list[str]) -> dict[str, str]:
    """Sidecar queue -> the broker pod it lives on, asking each live node for its own."""
    placed: dict[str, str] = {}
    for pod in live:
        out = _ctl(cluster, pod, "list_queues", "--local", "-q", "--no-table-headers", "name", "consumers")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith(routing.SIDECAR_QUEUE_PREFIX) and parts[1] != "0":
                placed[parts[0]] = pod
    return placed


def _ack_queue(cluster: ControlPlane, pod: str) -> tuple[str, list[str]]:
    """The broker pods that lead and hold the quorum ack queue (nodes are
    ``rabbit@<pod>.<headless Service>...``), as ``pod`` sees it."""
    out = _ctl(cluster, pod, "list_queues", "-q", "--no-table-headers", "name", "leader", "members")
    for line in out.splitlines():
        name, _, rest = line.partition("\t")
        if name == routing.OPERATOR_ACK_QUORUM_QUEUE:
            nodes = re.findall(r"rabbit@([\w-]+)\.", rest)
            return nodes[0], sorted(nodes[1:])
    raise AssertionError(f"no quorum ack queue: {out}")


def _running(cluster: ControlPlane, pod: str) -> list[str]:
    """The broker pods whose nodes are running members of the cluster, as ``pod`` sees it."""
    status = json.loads(_ctl(cluster, pod, "cluster_status", "--formatter", "json"))
    return [node.removeprefix("rabbit@").split(".", 1)[0] for node in status["running_nodes"]]


@pytest.fixture(scope="module")
def cluster_release(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[float]:
    started = time.monotonic()
    install(cluster, None, tmp_path_factory.mktemp("helm"), values={"rabbitmq": {"replicas": NODES}},
            timeout=420)  # fmt: skip
    took = time.monotonic() - started
    try:
        yield took
    finally:
        uninstall(cluster)
        claims = ("-n", RELEASE_NS, "delete", "pvc", "-l", BROKER, "--wait=true")
        cluster.kubectl(*claims, timeout=180, check=False)


@pytest.fixture
def ledger(cluster: ControlPlane, cluster_release: float) -> Iterator[str]:
    ns = f"ledger-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: cluster.kubectl("-n", ns, "get", "sa", "default", check=False).returncode == 0, 30,
             "default ServiceAccount")  # fmt: skip
    apply(cluster, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{APP}-config"},
                        "data": {"config.json": json_config(APP, "v1")}})  # fmt: skip
    annotations = {"refreshbus.io/inject": "true", "refreshbus.io/configmaps": f"{APP}-config",
                   "refreshbus.io/reload-url": "http://127.0.0.1:8080/-/reload-slow"}  # fmt: skip
    container = {"name": "node", "image": "refreshbus/demo-node:dev", "imagePullPolicy": "Never",
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2},
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/demo/config"}]}  # fmt: skip
    apply(cluster, ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP},
        "spec": {"replicas": PODS, "selector": {"matchLabels": {"app": APP}}, "template": {
            "metadata": {"labels": {"app": APP}, "annotations": annotations},
            "spec": {"securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
                     "containers": [container],
                     "volumes": [{"name": "config", "configMap": {"name": f"{APP}-config"}}]}}},
    })  # fmt: skip
    cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{APP}", "--timeout=180s", timeout=200)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.timeout(900)  # its set-up installs a three-node broker
def test_a_broker_node_lost_mid_refresh_loses_no_sidecar_and_no_ack(
    cluster: ControlPlane, cluster_release: float, ledger: str, node_cluster: Any
) -> None:
    node_cluster.timings["helm-install-3-node-broker"] = cluster_release
    members = pods(cluster, ledger, f"app={APP}")
    assert len(members) == PODS
    brokers = _broker_pods()
    placed = wait_for(lambda: (q := _sidecar_queues(cluster, brokers)) and len(q) == PODS and q, 60,
                      "every sidecar consuming from its queue")  # fmt: skip
    counts = Counter(placed.values())
    # Every node joined the ack queue (the chart's postStart hook), so it survives one of them.
    leader, holders = _ack_queue(cluster, brokers[0])
    assert holders == brokers, f"the ack queue's members are {holders}, not every node"
    victim = leader if counts[leader] else counts.most_common(1)[0][0]
    live = [b for b in brokers if b != victim]

    set_config(cluster, ledger, f"{APP}-config", "config.json", json_config(APP, "v2"))
    name = refresh(cluster, ledger, f"{APP}-config", {"workload": {"kind": "Deployment", "name": APP}},
                   deadline=180)  # fmt: skip

    def published() -> bool:
        status = cluster.get_json("-n", ledger, "configrefresh", name).get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
        return conditions.get("Published") == "True"

    wait_for(published, 60, "the refresh to be published", interval=0.1)
    phase = (cluster.get_json("-n", ledger, "configrefresh", name).get("status") or {}).get("phase")
    assert phase == "InProgress", f"the round was no longer in flight when the node was to go: {phase}"
    lost_at = time.monotonic()
    _ctl(cluster, victim, "eval", "erlang:halt().", check=False)  # a crash: no clean shutdown

    def failed_over() -> dict[str, str] | None:
        now = _sidecar_queues(cluster, live)
        return now if len(now) == PODS else None

    wait_for(failed_over, 90, "every sidecar consuming on a live node")
    reconnected = time.monotonic() - lost_at
    wait_for(lambda: _ack_queue(cluster, live[0])[0] in live, 60, "an ack queue leader on a live node")
    elected = time.monotonic() - lost_at
    status = wait_cfr(cluster, ledger, name, timeout=180)
    finished = time.monotonic() - lost_at
    assert status["phase"] == "Succeeded", status
    assert {r["pod"]: r["result"] for r in status["results"]} == {m.name: "ok" for m in members}, status
    for member in pods(cluster, ledger, f"app={APP}"):
        served = json.loads(http_get(member.ip))
        assert served["config"]["version"] == "v2", (member.name, served)
        assert served["loads"] == 2, (member.name, served)  # start-up and v2: one reload per change
    # The crashed node's container is restarted by the kubelet and rejoins the cluster.
    wait_for(lambda: victim in _running(cluster, live[0]), 180, f"{victim} to rejoin")
    rejoined = time.monotonic() - lost_at
    node_cluster.timings["3-node-broker-failover"] = reconnected
    node_cluster.timings["3-node-broker-ack-leader"] = elected
    node_cluster.timings["3-node-broker-round"] = finished
    print(
        f"\n[e2e-node] three-node broker, {victim} crashed mid-refresh ({counts[victim]} of {PODS} sidecar "
        f"queues on it, ack queue leader {'on it' if victim == leader else leader}): every sidecar "
        f"consuming on a live node after {reconnected:.1f} s, an ack queue leader on a live node after "
        f"{elected:.1f} s, round Succeeded {finished:.1f} s after the "
        f"loss, node back in the cluster after {rejoined:.1f} s"
    )
