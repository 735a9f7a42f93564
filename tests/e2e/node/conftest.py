"""End-to-end on a real single-node cluster (issue 6): real kubelet, containerd, runc.

Collected only when asked for, because bring-up needs root and (the first time on a
machine) builds images and Kubernetes binaries:

- ``make e2e`` sets ``REFRESHBUS_E2E_NODE=1``: this directory's tests start their own
  control plane + node on this machine (tests/testenv/refreshbus_testenv/node.py);
- ``make e2e-kind`` sets ``REFRESHBUS_EXISTING_CLUSTER=1``: the same tests run against the
  cluster in ``$KUBECONFIG`` (images must already be loaded there, e.g. with
  ``kind load image-archive`` of hack/build-images.py's tarballs).

Without either variable nothing here is collected (``make test`` decides whether to
include it; see the Makefile's e2e section).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from refreshbus_testenv import images
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane, ExistingCluster
from refreshbus_testenv.node import NODE_IP, Node, start_cluster
from refreshbus_testenv.release import RELEASE_NS, install, uninstall

EXISTING = os.environ.get("REFRESHBUS_EXISTING_CLUSTER") == "1"
ENABLED = EXISTING or os.environ.get("REFRESHBUS_E2E_NODE") == "1"

if not ENABLED:
    collect_ignore_glob = ["test_*.py"]


@dataclass
class NodeCluster:
    """What the suite talks to: the API (``plane``), the node (None on kind), timings."""

    plane: ControlPlane
    node: Node | None
    timings: dict[str, float]


def _report(timings: dict[str, float]) -> None:
    line = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    print(f"\n[e2e-node] {line}")
    path = os.environ.get("REFRESHBUS_E2E_TIMINGS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """Control plane + kubelet node with every project image imported (session-wide)."""
    timings: dict[str, float] = {}
    if EXISTING:
        plane: ControlPlane = ExistingCluster(os.environ["KUBECONFIG"])
        plane.start()
        yield NodeCluster(plane, None, timings)
        return
    started = time.monotonic()
    built = images.build()
    timings["images"] = time.monotonic() - started
    started = time.monotonic()
    plane, node = start_cluster(tmp_path_factory.mktemp("cluster"))
    timings["cluster-up"] = time.monotonic() - started
    try:
        started = time.monotonic()
        present = set(node.images())  # the pause and add-on images came with the node
        for ref, tarball in built.items():
            if ref not in present:
                node.import_image(tarball)
        timings["image-import"] = time.monotonic() - started
        _report(timings)
        yield NodeCluster(plane, node, timings)
    finally:
        _report(timings)
        started = time.monotonic()
        node.stop()
        plane.destroy()
        node.destroy()
        print(f"\n[e2e-node] teardown {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="session")
def cluster(node_cluster: NodeCluster) -> ControlPlane:
    """This directory's ``cluster`` is the real node's control plane."""
    return node_cluster.plane


@pytest.fixture(scope="session")
def node_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker | None]:
    """RabbitMQ on the host, listening on the node address so pods reach it (the chart's
    "existing broker" mode). Tests may stop()/start() it for fault tests. None on kind,
    where the chart's embedded broker is used."""
    if EXISTING:
        yield None
        return
    broker = Broker(tmp_path_factory.mktemp("rabbitmq"), host=NODE_IP)
    try:
        broker.start()
        yield broker
    finally:
        broker.destroy()


@pytest.fixture(scope="session")
def release(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The chart with its DEFAULT values -- only the images are the local ones -- so the
    broker is its embedded RabbitMQ in a pod (session-wide). test_release_lifecycle.py,
    which runs after every test that uses it, uninstalls it."""
    started = time.monotonic()
    install(node_cluster.plane, None, tmp_path_factory.mktemp("helm"))
    node_cluster.timings["helm-install"] = time.monotonic() - started
    yield RELEASE_NS
    if EXISTING:  # locally the whole cluster goes away; on kind, leave it as we found it
        uninstall(node_cluster.plane)


#: Files that replace the session's release, run after every test that uses it, in this order:
#: the life cycle (uninstall, upgrade, the existing-broker mode), then a three-node broker.
LAST = {"test_release_lifecycle.py": 1, "test_broker_cluster_node.py": 2}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: LAST.get(item.path.name, 0))


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace; the controller manager creates its ``default`` ServiceAccount."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode != 0:
        assert time.monotonic() < deadline, "no default ServiceAccount (is kube-controller-manager up?)"
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def apps_dir() -> Path:
    return Path(__file__).parent / "apps"
