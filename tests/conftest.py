"""Session-wide real infrastructure for every test that needs it.

``broker`` is a real RabbitMQ node (``broker_cluster`` three of them, clustered) and
``cluster`` a real etcd + kube-apiserver, all
started by the project itself (tests/testenv) on free loopback ports and stopped at the
end. They are started lazily: unit tests pay nothing. There is no skip path: if the
infrastructure cannot start, every test that needs it errors with the reason, under
CI=true or not.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from refreshbus_support.faultproxy import FaultProxy
from refreshbus_testenv.broker import Broker, BrokerCluster
from refreshbus_testenv.controlplane import ControlPlane, ExistingCluster

# Property tests assert what the code does with each input, never how fast: on a 2-core
# machine shared with a real API server and broker, hypothesis' timing checks (per-example
# deadline, too_slow data generation) fail for reasons that say nothing about the code.
settings.register_profile("refreshbus", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("refreshbus")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real RabbitMQ node on loopback; tests may ``stop()``/``start()`` it."""
    node = Broker(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
        yield node
    finally:
        node.destroy()


@pytest.fixture
def running_broker(broker: Broker) -> Broker:
    """The session broker, restarted first if an earlier test left it stopped."""
    if not broker.running:
        broker.pid = None
        broker.start()
    return broker


@pytest.fixture(scope="module")
def broker_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerCluster]:
    """Three real RabbitMQ nodes on this host, clustered; tests may kill and restart nodes.
    Every node is stopped and its data deleted afterwards, whatever the test did."""
    nodes = BrokerCluster(tmp_path_factory.mktemp("rabbitmq-cluster"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.destroy()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real kube-apiserver (RBAC, admission chain, SA token issuer) with the CRDs installed.

    With REFRESHBUS_EXISTING_CLUSTER=1 (``make e2e-kind``) the cluster in $KUBECONFIG is
    used instead of starting one.
    """
    if os.environ.get("REFRESHBUS_EXISTING_CLUSTER") == "1":
        plane: ControlPlane = ExistingCluster(os.environ["KUBECONFIG"])
    else:
        plane = ControlPlane(tmp_path_factory.mktemp("k8s"))
    try:
        plane.start()
        plane.apply_crds()
        yield plane
    finally:
        plane.destroy()


@pytest.fixture
def api_proxy(cluster: ControlPlane) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's API server (``kubeconfig_via`` points a
    client at it); the test switches it to slow or unreachable and back."""
    proxy = FaultProxy(cluster.api_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace with its ``default`` ServiceAccount (no controller manager runs
    here to create it), deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("-n", name, "create", "serviceaccount", "default")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
