"""Targeting happens at the broker: each sidecar's queue is bound to its pod, workload,
namespace and broadcast keys only, so an event for another pod never reaches it."""

from __future__ import annotations

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import Owner, create_pod
from refreshbus_support.sidecars import Sidecar
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_wire import routing
from refreshbus_wire.events import AckResult, Scope, Target

from .conftest import Sidecars

pytestmark = pytest.mark.integration

RECEIVED = "refreshbus_sidecar_events_received_total"


@pytest.fixture
def two_pods(cluster: ControlPlane, namespace: str, sidecars: Sidecars) -> tuple[Sidecar, Sidecar]:
    configs.put_configmap(cluster, namespace, "shared", {"k": "v1"})
    pod_a = create_pod(cluster, namespace, "orders-a", labels={"app": "orders"},
                       owner=Owner.replicaset_of("orders"), configmaps=["shared"])
    pod_b = create_pod(cluster, namespace, "billing-b", labels={"app": "billing"},
                       owner=Owner.replicaset_of("billing"), configmaps=["shared"])
    return sidecars.start(pod_a), sidecars.start(pod_b)


def test_an_event_for_pod_b_is_never_routed_to_pod_a(
    two_pods: tuple[Sidecar, Sidecar], cluster: ControlPlane, namespace: str, bus: TestBus,
    running_broker: Broker,
) -> None:
    sidecar_a, sidecar_b = two_pods
    rv = configs.put_configmap(cluster, namespace, "shared", {"k": "v2"})
    event = make_event(namespace, [("ConfigMap", "shared", rv)],
                       target=Target(scope=Scope.POD, namespace=namespace, name="billing-b"))

    bus.publish(event)

    assert bus.wait_ack(event.id, pod="billing-b").result is AckResult.OK
    assert sidecar_b.metrics()[RECEIVED] == 1
    assert sidecar_a.metrics()[RECEIVED] == 0
    prefix = f"{routing.SIDECAR_QUEUE_PREFIX}{namespace}.orders-a."
    (queue_a,) = [q for q in running_broker.list_queues() if q.startswith(prefix)]
    assert running_broker.list_queues()[queue_a] == 0  # nothing waiting for A either
    assert bus.acks_for(event.id) == [a for a in bus.acks if a.pod == "billing-b" and a.event_id == event.id]
    assert (sidecar_a.target_dir / "configmap-shared" / "k").read_text() == "v1"


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        pytest.param(Scope.ALL, {"orders-a", "billing-b"}, id="broadcast"),
        pytest.param(Scope.NAMESPACE, {"orders-a", "billing-b"}, id="namespace"),
        pytest.param(Scope.WORKLOAD, {"orders-a"}, id="workload"),
    ],
)
def test_broadcast_namespace_and_workload_keys_reach_exactly_their_pods(
    two_pods: tuple[Sidecar, Sidecar], cluster: ControlPlane, namespace: str, bus: TestBus,
    scope: Scope, expected: set[str],
) -> None:
    sidecars_by_pod = {s.pod.name: s for s in two_pods}
    rv = configs.put_configmap(cluster, namespace, "shared", {"k": "v2"})
    target = {
        Scope.ALL: Target(scope=Scope.ALL),
        Scope.NAMESPACE: Target(scope=Scope.NAMESPACE, namespace=namespace),
        Scope.WORKLOAD: Target(scope=Scope.WORKLOAD, namespace=namespace, kind="Deployment", name="orders"),
    }[scope]
    event = make_event(namespace, [("ConfigMap", "shared", rv)], target=target)

    bus.publish(event)

    for pod in expected:
        assert bus.wait_ack(event.id, pod=pod).result is AckResult.OK
    for pod, sidecar in sidecars_by_pod.items():
        assert sidecar.metrics()[RECEIVED] == (1 if pod in expected else 0)
    assert {a.pod for a in bus.acks_for(event.id)} == expected
