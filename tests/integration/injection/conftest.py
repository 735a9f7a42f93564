"""Fixtures: the injection webhook process (injharness.Injector), a namespace it sees."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from injharness import TEST_LABEL, Injector

__all__ = ["TEST_LABEL", "Injector"]


@pytest.fixture(scope="module")
def injector(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Injector]:
    """The webhook process, registered (failurePolicy Ignore) and serving."""
    operator_ns = f"rb-sys-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", operator_ns)
    inj = Injector(cluster, tmp_path_factory.mktemp("injector"), operator_ns)
    try:
        inj.register()
        inj.start()
        yield inj
    finally:
        inj.stop()
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", inj.mwc_name, "--ignore-not-found", check=False
        )
        cluster.kubectl("delete", "namespace", operator_ns, "--wait=false", check=False)


@pytest.fixture
def injector_up(injector: Injector) -> Injector:
    """The webhook, restarted and re-registered with failurePolicy Ignore if a test changed that."""
    injector.register("Ignore")
    if injector.pid is None:
        injector.start()
    return injector


@pytest.fixture
def ns(cluster: Any, namespace: str, injector_up: Injector) -> str:
    """A fresh namespace whose pods the test webhook sees."""
    cluster.kubectl("label", "namespace", namespace, f"{TEST_LABEL}={injector_up.session}")
    return namespace


@pytest.fixture
def create_pod(cluster: Any) -> Callable[..., Any]:
    """kubectl create a pod; returns the stored object (or the CompletedProcess if it failed)."""

    def create(namespace: str, pod: dict[str, Any], check: bool = True) -> Any:
        proc = cluster.kubectl(
            "-n", namespace, "create", "-o", "json", "-f", "-", input=json.dumps(pod), check=False
        )
        if not check:
            return proc
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return create
