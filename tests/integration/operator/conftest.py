"""Fixtures for operator integration tests: the real operator process against the real
API server and RabbitMQ, fake sidecars on the real broker."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from opharness import FakeSidecar, OperatorProc
from refreshbus_support.pods import ack_token


@pytest.fixture
def start_operator(
    cluster: Any, running_broker: Any, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProc]]:
    """Start ``refreshbus-operator`` processes for the test's namespace; all are stopped after."""
    procs: list[OperatorProc] = []

    def start(
        *args: str,
        name: str = "operator",
        wait: bool = True,
        env: dict[str, str] | None = None,
        namespaces: tuple[str, ...] | None = None,
        kubeconfig: str | None = None,
        inject: str | None = None,
    ) -> OperatorProc:
        proc = OperatorProc(
            kubeconfig=kubeconfig or cluster.kubeconfig,
            broker_urls=[running_broker.url("refreshbus-operator")],
            namespaces=namespaces if namespaces is not None else (namespace,),
            workdir=tmp_path,
            args=args or ("--standalone",),
            env=env or {},
            name=f"{name}-{len(procs)}",
            inject=inject,
        )
        procs.append(proc)
        proc.start(wait=wait)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def fake_sidecars(cluster: Any, running_broker: Any) -> Iterator[Callable[..., FakeSidecar]]:
    """Fake sidecars for pods that exist in the API server; each acks with its pod's real
    projected-token equivalent (a TokenRequest bound to the pod, audience refreshbus.io/ack)."""
    fakes: list[FakeSidecar] = []

    def make(namespace: str, pod: str, workload: tuple[str, str], behaviour: Any = None) -> FakeSidecar:
        token = ack_token(cluster, namespace, pod)
        url = running_broker.url("refreshbus-sidecar")
        fake = FakeSidecar(url, namespace, pod, workload, behaviour, token)
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.stop()
