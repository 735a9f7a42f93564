"""End-to-end fixtures: the real operator process, real sidecar processes for pods that
exist as API objects, and real apps (nginx, a Node.js server) that the sidecars reload.
Every process started here is stopped at teardown, pass or fail."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "operator"))

from opharness import OperatorProc
from refreshbus_support.fleet import Fleet


@pytest.fixture
def start_operator(cluster: Any, running_broker: Any, namespace: str, tmp_path: Path
                   ) -> Iterator[Callable[..., OperatorProc]]:
    procs: list[OperatorProc] = []

    def start(*args: str, name: str = "operator", env: dict[str, str] | None = None,
              inject: str | None = None) -> OperatorProc:
        proc = OperatorProc(kubeconfig=cluster.kubeconfig,
                            broker_urls=[running_broker.url("refreshbus-operator")],
                            namespaces=(namespace,), workdir=tmp_path, args=args or ("--standalone",),
                            env=env or {}, name=f"{name}-{len(procs)}", inject=inject)
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def fleet(cluster: Any, running_broker: Any, namespace: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(cluster, running_broker, namespace, tmp_path)
    try:
        yield f
    finally:
        f.stop()
