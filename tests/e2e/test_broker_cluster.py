"""A RabbitMQ cluster loses a node while a refresh is in flight: three real nodes on this
host, the real operator, real sidecar processes and the real apps they reload. First, on
the same cluster: the chart's hook that makes each node a member of the ack queue.

The node killed (SIGKILL, as a crashed machine) is the one most sidecars are connected to
(their exclusive queues live there) and the leader of the operator's quorum ack queue; the
acks of the round in flight are waiting in that queue, the operator being down at that
moment too. Every sidecar must fail over to a live node, every ack must still be folded
(a lost one would be re-asked by the operator and answered ``unchanged``, not ``ok``), the
round must finish, and a second refresh while the node is still down must reach every pod.

``REFRESHBUS_FAILOVER_PODS`` sets the number of pods (default 3); ``make bench-broker-failover``
runs this with more and prints the times (this test asserts behaviour, never time).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml
from opharness import OperatorProc, cfr, condition, refresh, wait_for, wait_phase
from refreshbus_support import configs
from refreshbus_support.fleet import Fleet
from refreshbus_testenv.broker import RABBITMQ_BIN, BrokerCluster
from refreshbus_wire import pods as podc
from refreshbus_wire import routing

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

PODS = int(os.environ.get("REFRESHBUS_FAILOVER_PODS", "3"))
LABELS = {"app": "api"}
SPEC = {"sources": [{"configMap": {"name": "app-config"}}],
        "target": {"selector": {"matchLabels": LABELS}}, "deadlineSeconds": 180}


def config(color: str) -> dict[str, str]:
    return {"config.json": json.dumps({"color": color})}


@pytest.fixture
def fleet(cluster: Any, broker_cluster: BrokerCluster, namespace: str, tmp_path: Path) -> Iterator[Fleet]:
    # Reloads answer after 5 s (/-/reload-slow): the round stays in flight long enough to
    # stop the operator between its publish and the acks.
    f = Fleet(cluster, broker_cluster, namespace, tmp_path, sidecar_env={podc.ENV_RELOAD_TIMEOUT: "30"})
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def operators(cluster: Any, broker_cluster: BrokerCluster, namespace: str, tmp_path: Path
              ) -> Iterator[list[OperatorProc]]:
    procs: list[OperatorProc] = []
    yield procs
    for proc in procs:
        proc.stop()


def start_operator(procs: list[OperatorProc], cluster: Any, nodes: BrokerCluster, namespace: str,
                   tmp_path: Path) -> OperatorProc:
    proc = OperatorProc(kubeconfig=cluster.kubeconfig, broker_urls=nodes.urls_for("refreshbus-operator"),
                        namespaces=(namespace,), workdir=tmp_path, args=("--standalone",),
                        env={}, name=f"operator-{len(procs)}")
    procs.append(proc)
    return proc.start()


def lead_ack_queue_from(node_url: str, members: int | None = None) -> None:
    """(Re)declare the quorum ack queue through ``node_url``: RabbitMQ makes the declaring
    node its first leader. ``members``: on that many nodes only (default: every node)."""
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if members is not None:
        arguments["x-quorum-initial-group-size"] = members

    async def declare() -> None:
        conn = await aio_pika.connect(node_url)
        channel = await conn.channel()
        await channel.queue_delete(routing.OPERATOR_ACK_QUORUM_QUEUE)
        await channel.declare_queue(routing.OPERATOR_ACK_QUORUM_QUEUE, durable=True, arguments=arguments)
        await conn.close()

    asyncio.run(declare())


def chart_post_start_command() -> list[str]:
    """The postStart command of the chart's RabbitMQ container with ``rabbitmq.replicas=3``."""
    build = subprocess.run(["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True,
                           check=True)
    helm = build.stdout.strip().splitlines()[-1]
    out = subprocess.run([helm, "template", "rb", str(ROOT / "charts" / "refreshbus"),
                          "--set", "rabbitmq.replicas=3"], capture_output=True, text=True, check=True).stdout
    (sts,) = [m for m in yaml.safe_load_all(out) if m and m["kind"] == "StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return list(container["lifecycle"]["postStart"]["exec"]["command"])


def test_the_charts_post_start_hook_makes_each_node_a_member_of_the_ack_queue(broker_cluster):
    """In the chart, pod 0 declares the ack queue (definitions) before the others joined:
    each node runs the hook once booted. Here: the ack queue on one node, then the hook as
    the other two nodes run it (their node name and cookie in its environment)."""
    nodes = broker_cluster
    first, *others = nodes.nodes
    lead_ack_queue_from(first.url(), members=1)
    assert nodes.quorum_members(routing.OPERATOR_ACK_QUORUM_QUEUE)[1] == [first.node]
    command = chart_post_start_command()
    for node in others:
        env = {**os.environ, **node._env(), "PATH": f"{RABBITMQ_BIN}:{os.environ['PATH']}"}
        subprocess.run(command, env=env, check=True, timeout=180)
    assert sorted(nodes.quorum_members(routing.OPERATOR_ACK_QUORUM_QUEUE)[1]) == sorted(n.node for n in nodes)


def sidecar_nodes(nodes: BrokerCluster) -> dict[str, str]:
    return nodes.queue_nodes(routing.SIDECAR_QUEUE_PREFIX)


def test_a_node_lost_mid_refresh_loses_no_sidecar_and_no_ack(
    cluster, namespace, broker_cluster, fleet, operators, tmp_path
):
    nodes = broker_cluster
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    members = [fleet.node_pod(f"api-{i}", labels=LABELS, http_reload=True, reload_path="/-/reload-slow")
               for i in range(PODS)]
    wait_for(lambda: len(sidecar_nodes(nodes)) == PODS, 30, "every sidecar's queue")
    victim_name, on_victim = Counter(sidecar_nodes(nodes).values()).most_common(1)[0]
    victim = nodes.node(victim_name)
    lead_ack_queue_from(victim.url("refreshbus-operator"))
    leader, members_of_ack_queue = nodes.quorum_members(routing.OPERATOR_ACK_QUORUM_QUEUE)
    assert leader == victim_name
    assert sorted(members_of_ack_queue) == sorted(n.node for n in nodes)

    op = start_operator(operators, cluster, nodes, namespace, tmp_path)
    configs.put_configmap(cluster, namespace, "app-config", config("blue"))
    refresh(cluster, namespace, "r1", SPEC)
    wait_for(lambda: condition(cfr(cluster, namespace, "r1"), "Published").get("status") == "True", 30,
             "the event to be published")
    op.kill()  # the acks now wait in the quorum queue, on the node about to be lost
    wait_for(lambda: nodes.live().list_queues().get(routing.OPERATOR_ACK_QUORUM_QUEUE) == PODS, 60,
             "every ack to be queued")

    lost_at = time.monotonic()
    victim.kill()
    live = {n.node for n in nodes if n is not victim}

    def failed_over() -> bool:
        placed = sidecar_nodes(nodes)
        return (len(placed) == PODS and set(placed.values()) <= live
                and all(m.sidecar is not None and m.sidecar.consuming for m in members))

    wait_for(failed_over, 60, "every sidecar to consume on a live node")
    reconnected = time.monotonic() - lost_at
    assert nodes.quorum_members(routing.OPERATOR_ACK_QUORUM_QUEUE)[0] in live  # a new leader

    op = start_operator(operators, cluster, nodes, namespace, tmp_path)
    obj = wait_phase(cluster, namespace, "r1", "Succeeded", timeout=120, operator=op)
    finished = time.monotonic() - lost_at
    # Each pod's own ack from before the loss: a lost ack would have been re-asked after
    # the restart and answered "unchanged" (the pod already had the content).
    assert {r["pod"]: r["result"] for r in obj["status"]["results"]} == {m.name: "ok" for m in members}

    # The node is still down: the next change reaches every pod through its new queue.
    configs.put_configmap(cluster, namespace, "app-config", config("green"))
    changed_at = time.monotonic()
    refresh(cluster, namespace, "r2", SPEC)
    obj = wait_phase(cluster, namespace, "r2", "Succeeded", timeout=120, operator=op)
    second = time.monotonic() - changed_at
    assert obj["status"]["counts"]["succeeded"] == PODS
    for m in members:
        assert m.node_state()["config"] == {"color": "green"}
        assert m.node_state()["loads"] == 3  # start, blue, green: never reloaded twice for one change
    print(f"\nbroker node lost mid-refresh ({PODS} pods, {on_victim} of them on the lost node, "
          f"ack queue leader on it): every sidecar consuming on a live node after {reconnected:.1f} s; "
          f"round finished {finished:.1f} s after the loss (operator restart included); "
          f"next refresh with the node down: {second:.1f} s (5 s of it the app's slow reload)")
