"""A slow or silent API server never costs the sidecar its broker connection or its
liveness: the connection thread keeps serving heartbeats while the worker waits for the
API, and the refresh completes and is acked once the API answers again.

The API server is reached through a real TCP proxy (refreshbus_support.faultproxy) that
swallows every request while the test says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.faultproxy import FaultProxy
from refreshbus_support.pods import create_pod
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.procs import wait_until
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult

from .conftest import Sidecars

pytestmark = pytest.mark.integration

#: Longer than the AMQP heartbeat timeout (2 x the heartbeat set below), the old 30 s
#: liveness age and the ~64 s the old fetch retries took.
STALL = 70.0
#: Short, so that a connection thread that stopped serving heartbeats is dropped by the
#: broker well within the stall.
HEARTBEAT = "5"


def sidecar_connections(broker: Broker, pod: str) -> list[str]:
    """Names (peer address and port) of the broker connections the pod's sidecar holds."""
    out = broker.ctl("list_connections", "-q", "--no-table-headers", "name", "client_properties")
    return [line.split("\t", 1)[0] for line in out.splitlines() if f"refreshbus-sidecar {pod}" in line]


def test_a_stalled_api_server_keeps_the_broker_connection_and_liveness_and_the_refresh_completes(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, running_broker: Broker, bus: TestBus,
    api_proxy: FaultProxy, tmp_path: Path,
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={podc.ENV_ACTION: "none"})
    kubeconfig = api_proxy.kubeconfig_via(cluster.kubeconfig, tmp_path / "kubeconfig")
    sidecar = sidecars.start(pod, kubeconfig=kubeconfig, env={podc.ENV_HEARTBEAT: HEARTBEAT})
    instance = f"{namespace}/api-0"
    connections = sidecar_connections(running_broker, instance)
    assert len(connections) == 1
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})

    api_proxy.set_mode("blackhole")
    event = make_event(namespace, [("ConfigMap", "settings", rv)], deadline_seconds=300)
    bus.publish(event)
    stall_ends = time.monotonic() + STALL
    while time.monotonic() < stall_ends:  # sample the probes through the whole stall
        status, body = sidecar.probe("/livez")
        assert status == 200, f"{body}\n{sidecar.logs_tail()}"
        assert sidecar.consuming, sidecar.logs_tail()
        assert bus.acks_for(event.id) == []  # (also keeps the test's own connection alive)
        time.sleep(1)
    assert json.loads(sidecar.probe("/livez")[1])["worker_busy_seconds"] > STALL - 5  # the refresh waits
    assert sidecar_connections(running_broker, instance) == connections  # the same connection
    api_proxy.set_mode("pass")

    ack = bus.wait_ack(event.id, timeout=60)
    assert ack.result is AckResult.OK, ack
    assert (sidecar.target_dir / "configmap-settings" / "a").read_text() == "2"
    assert sidecar_connections(running_broker, instance) == connections
    assert sidecar.metrics()["refreshbus_sidecar_reconnects_total"] == 0


def test_sigterm_while_the_worker_waits_for_a_silent_api_server_stops_at_once(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, running_broker: Broker, bus: TestBus,
    api_proxy: FaultProxy, tmp_path: Path,
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={podc.ENV_ACTION: "none"})
    kubeconfig = api_proxy.kubeconfig_via(cluster.kubeconfig, tmp_path / "kubeconfig")
    sidecar = sidecars.start(pod, kubeconfig=kubeconfig)
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})
    api_proxy.set_mode("blackhole")
    event = make_event(namespace, [("ConfigMap", "settings", rv)], deadline_seconds=300)
    bus.publish(event)
    wait_until(lambda: json.loads(sidecar.probe("/livez")[1])["worker_busy_seconds"] > 1, 30,
               "the worker to wait for the API server", sidecar.proc, sidecar.log)

    started = time.monotonic()
    assert sidecar.stop() == 0
    assert time.monotonic() - started < 2
    assert bus.acks_for(event.id) == []  # left unacknowledged: the broker redelivers it
