"""End-to-end fixtures: the real operator process, real sidecar processes for pods that
exist as API objects, and real apps (nginx, a Node.js server) that the sidecars reload.
Every process started here is stopped at teardown, pass or fail."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "operator"))

from opharness import OperatorProc
from refreshbus_support import apps as apps_mod
from refreshbus_support.pods import Owner, TestPod, create_pod
from refreshbus_support.sidecars import Sidecar, start_sidecar
from refreshbus_testenv.procs import free_port
from refreshbus_wire import pods as podc

FAST_SIDECAR = {podc.ENV_FETCH_JITTER: "0.02"}


@pytest.fixture
def start_operator(cluster: Any, running_broker: Any, namespace: str, tmp_path: Path
                   ) -> Iterator[Callable[..., OperatorProc]]:
    procs: list[OperatorProc] = []

    def start(*args: str, name: str = "operator", env: dict[str, str] | None = None) -> OperatorProc:
        proc = OperatorProc(kubeconfig=cluster.kubeconfig,
                            broker_urls=[running_broker.url("refreshbus-operator")],
                            namespaces=(namespace,), workdir=tmp_path, args=args or ("--standalone",),
                            env=env or {}, name=f"{name}-{len(procs)}")
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        proc.stop()


@dataclass
class Member:
    """One "pod": the API object, its sidecar process and the app it reloads."""

    pod: TestPod
    shared: Path
    app: apps_mod.App | None = None
    sidecar: Sidecar | None = None
    app_port: int = 0
    config_file: Path | None = None

    @property
    def name(self) -> str:
        return self.pod.name

    def node_state(self) -> dict[str, Any]:
        assert self.app is not None
        status, body = self.app.get("/")
        assert status == 200, body
        return dict(json.loads(body))


class Fleet:
    def __init__(self, cluster: Any, broker: Any, namespace: str, tmp_path: Path) -> None:
        self.cluster, self.broker, self.namespace, self.tmp_path = cluster, broker, namespace, tmp_path
        self.members: list[Member] = []

    def node_pod(self, name: str, *, labels: dict[str, str], owner: Owner | None = None,
                 configmap: str = "app-config", process_pattern: str | None = None,
                 start: bool = True) -> Member:
        """A pod whose sidecar writes ``configmap`` and SIGHUPs a Node.js app."""
        shared = self.tmp_path / f"shared-{name}"
        port = free_port()
        config_file = shared / f"configmap-{configmap}" / "config.json"
        pattern = process_pattern or rf"config-server\.js {port} {re.escape(str(config_file))}$"
        action = {podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP", podc.ENV_PROCESS: pattern}
        pod = create_pod(self.cluster, self.namespace, name, labels=labels, owner=owner,
                         configmaps=[configmap], action=action)
        member = Member(pod=pod, shared=shared, app_port=port, config_file=config_file)
        self.members.append(member)
        if start:
            self.start(member)
        return member

    def start(self, member: Member) -> None:
        """Start the sidecar (it writes the current config), then the app that reads it."""
        member.sidecar = start_sidecar(member.pod, broker_urls=[self.broker.url("refreshbus-sidecar")],
                                       kubeconfig=self.cluster.kubeconfig, target_dir=member.shared,
                                       workdir=self.tmp_path / f"sidecar-{member.name}", env=FAST_SIDECAR)
        assert member.config_file is not None
        member.app = apps_mod.start_node_app(self.tmp_path / f"app-{member.name}", member.config_file,
                                             port=member.app_port)

    def nginx_pod(self, name: str, *, labels: dict[str, str], owner: Owner | None = None,
                  configmap: str = "app-config") -> Member:
        shared = self.tmp_path / f"shared-{name}"
        app = apps_mod.start_nginx(self.tmp_path / f"nginx-{name}", shared / f"configmap-{configmap}")
        pod = create_pod(self.cluster, self.namespace, name, labels=labels, owner=owner,
                         configmaps=[configmap], action={podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP",
                                 podc.ENV_PROCESS: app.process_pattern})
        member = Member(pod=pod, shared=shared, app=app)
        self.members.append(member)
        member.sidecar = start_sidecar(pod, broker_urls=[self.broker.url("refreshbus-sidecar")],
                                       kubeconfig=self.cluster.kubeconfig, target_dir=shared,
                                       workdir=self.tmp_path / f"sidecar-{name}", env=FAST_SIDECAR)
        return member

    def stop(self) -> None:
        for member in self.members:
            if member.sidecar is not None:
                member.sidecar.stop()
            if member.app is not None:
                member.app.stop()


@pytest.fixture
def fleet(cluster: Any, running_broker: Any, namespace: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(cluster, running_broker, namespace, tmp_path)
    try:
        yield f
    finally:
        f.stop()
