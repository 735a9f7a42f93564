"""Fixtures for sidecar integration tests: real sidecar processes, real apps, a test-side
bus peer. Every process started here is stopped at teardown, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from refreshbus_support import apps as apps_mod
from refreshbus_support.bus import TestBus
from refreshbus_support.sidecars import Sidecar, start_sidecar
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane


@pytest.fixture
def bus(running_broker: Broker) -> Iterator[TestBus]:
    peer = TestBus(running_broker.url())
    try:
        yield peer
    finally:
        peer.close()


class Sidecars:
    """Starts sidecars for pods; the fixture stops them all."""

    def __init__(self, cluster: ControlPlane, broker: Broker, tmp_path: Path) -> None:
        self.cluster = cluster
        self.broker = broker
        self.tmp_path = tmp_path
        self.started: list[Sidecar] = []

    def start(self, pod: Any, *, target_dir: Path | None = None, env: Mapping[str, str] | None = None,
              wait_ready: bool = True, kubeconfig: str | Path | None = None, args: tuple[str, ...] = ("run",),
              broker_urls: list[str] | None = None) -> Sidecar:
        workdir = self.tmp_path / f"sidecar-{pod.name}-{len(self.started)}"
        sidecar = start_sidecar(
            pod,
            broker_urls=broker_urls or [self.broker.url("refreshbus-sidecar")],
            kubeconfig=kubeconfig or self.cluster.kubeconfig,
            target_dir=target_dir or (self.tmp_path / f"shared-{pod.name}"),
            workdir=workdir,
            env=env,
            args=args,
            wait_ready=False,
        )
        self.started.append(sidecar)
        if wait_ready:
            sidecar.wait_ready()
        return sidecar


@pytest.fixture
def sidecars(cluster: ControlPlane, running_broker: Broker, tmp_path: Path) -> Iterator[Sidecars]:
    factory = Sidecars(cluster, running_broker, tmp_path)
    try:
        yield factory
    finally:
        for sidecar in factory.started:
            sidecar.stop()


class Apps:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[apps_mod.App] = []

    def nginx(self, include_dir: Path) -> apps_mod.App:
        app = apps_mod.start_nginx(self.tmp_path / f"nginx-{len(self.started)}", include_dir)
        self.started.append(app)
        return app

    def node(self, config_file: Path) -> apps_mod.App:
        app = apps_mod.start_node_app(self.tmp_path / f"node-{len(self.started)}", config_file)
        self.started.append(app)
        return app


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    factory = Apps(tmp_path)
    try:
        yield factory
    finally:
        for app in factory.started:
            app.stop()
