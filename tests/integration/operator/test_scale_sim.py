"""The scale harness, short: 50 simulated sidecars (refreshbus_sim, bench/sim) against the
real operator, API server and broker. Every ack lands in status, and the API requests one
refresh costs do not grow with its targets (10 vs 50). No timing assertions: the figures
are ``make bench-scale``'s (docs/scale.md)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from opharness import configmap, wait_for
from refreshbus_operator.kube import Kube, load_configuration
from refreshbus_sim.fleet import create_pods
from refreshbus_sim.loop import LoopThread
from refreshbus_sim.measure import api_requests
from refreshbus_sim.sidecars import Behaviour, SimPod, Simulator
from refreshbus_wire import routing

pytestmark = pytest.mark.integration

N = 50
#: What the operator touches; the API server's own housekeeping (leases, endpoints) is not counted.
OPERATOR_RESOURCES = ("pods", "configrefreshes", "events", "tokenreviews", "configmaps")


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


def test_every_ack_lands_and_api_requests_per_refresh_do_not_grow_with_targets(
    cluster: Any, running_broker: Any, namespace: str, start_operator: Any, loop: LoopThread
) -> None:
    configmap(cluster, namespace, "app-config", {"k": "v"})
    kube = Kube(load_configuration(cluster.kubeconfig))
    pods = loop.run(create_pods(kube, namespace, [("shop", N)], labels={"tier": "sim"},
                                configmaps=lambda _d: ("app-config",)), timeout=120)
    # One in ten answers "failed": a failure is an ack too, and must land like the others.
    sim = Simulator(running_broker.url("refreshbus-sidecar"), Behaviour(failure_rate=0.1))
    loop.run(sim.add([SimPod(routing.PodIdentity(namespace, p.name, p.workload_kind, p.workload_name), token)
                      for p, token in pods]), timeout=120)
    # Acks earlier tests left in the session broker's shared ack queue would be checked too
    # (for events this operator never heard of): they are not this test's.
    for queue in running_broker.list_queues():
        if queue.startswith(routing.OPERATOR_ACK_QUEUE):
            running_broker.ctl("purge_queue", queue)
    op = start_operator(env={"REFRESHBUS_OPERATOR_AUTO_REFRESH": "false"})
    names = sorted(p.name for p, _ in pods)
    done = 0

    def refresh(name: str, targets: list[str]) -> dict[str, Any]:
        """Apply a ConfigRefresh and wait for its final status (the operator's own counter,
        so that waiting costs no API request)."""
        nonlocal done
        manifest = {"apiVersion": "refreshbus.io/v1alpha1", "kind": "ConfigRefresh",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"sources": [{"configMap": {"name": "app-config"}}], "target": {"pods": targets}}}
        cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
        done += 1
        wait_for(lambda: sum(v for k, v in op.metrics().items()
                             if k.startswith("refreshbus_operator_refreshes_total{")) >= done,
                 60, f"{name} to finish")
        obj: dict[str, Any] = cluster.get_json("-n", namespace, "configrefresh", name)
        return obj

    def cost(prefix: str, targets: list[str], rounds: int = 2) -> Counter[str]:
        before = api_requests(cluster)
        for r in range(rounds):
            counts = refresh(f"{prefix}-{r}", targets)["status"]["counts"]
            assert counts["acked"] == counts["targets"] == len(targets), counts
            assert counts["succeeded"] + counts["failed"] == len(targets), counts
        spent = api_requests(cluster) - before
        return Counter({k: v for k, v in spent.items() if k.split()[1].split("/")[0] in OPERATOR_RESOURCES})

    def identity_checks() -> Counter[str]:
        return Counter({k: v for k, v in op.metrics().items()
                        if k.startswith(("refreshbus_operator_token_reviews_total{",
                                         "refreshbus_operator_ack_identity_checks_total{"))})

    before = identity_checks()
    warm = refresh("warm", names)
    assert warm["status"]["counts"]["acked"] == N
    # 50 tokens never seen before, each verified against the API server's published
    # issuer keys: not one TokenReview.
    checks = identity_checks() - before
    assert checks == {'refreshbus_operator_ack_identity_checks_total{result="verified"}': N}, op.logs_tail()
    few, all_ = cost("few", names[:10]), cost("all", names)
    assert len(sim.deliveries) == N + 2 * 10 + 2 * N  # one delivery per target per refresh
    # Status PATCHes are coalesced by time (status_flush_interval), not per ack: the number a
    # round needs depends on when its acks arrive, so allow one more per round.
    patches = "PATCH configrefreshes/status"
    assert all_[patches] <= few[patches] + 2, (few, all_)
    del few[patches], all_[patches]
    assert all_ == few
    assert "POST tokenreviews" not in all_
    loop.run(sim.close())
    loop.run(kube.aclose())
