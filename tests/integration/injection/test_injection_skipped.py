"""A pod that asked for the sidecar but was admitted without it (the webhook was not
called: here it is not registered at all, as when it is down with failurePolicy Ignore)
gets a Warning Event InjectionSkipped and counts in
refreshbus_operator_injection_skipped_total: the real kopf handlers against the real API
server, metrics scraped from the real process."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from injharness import Injector
from refreshbus_testenv.procs import free_port
from refreshbus_wire import pods

pytestmark = pytest.mark.integration


@pytest.fixture
def handlers(cluster: Any, namespace: str, tmp_path: Path) -> Iterator[tuple[Injector, int]]:
    """The operator's injection handlers (kopf), with no webhook configuration registered,
    and the port of their metrics."""
    operator_ns = f"rb-sys-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", operator_ns)
    metrics_port = free_port()
    inj = Injector(
        cluster, tmp_path, operator_ns, mode="kopf", watch_namespace=namespace,
        env={"REFRESHBUS_TEST_METRICS_PORT": str(metrics_port)},
    )
    try:
        inj.start()
        yield inj, metrics_port
    finally:
        inj.stop()
        cluster.kubectl("delete", "namespace", operator_ns, "--wait=false", check=False)


def create_pod(cluster: Any, namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
    }
    out = cluster.kubectl("-n", namespace, "create", "-o", "json", "-f", "-", input=json.dumps(body))
    stored: dict[str, Any] = json.loads(out.stdout)
    return stored


def skipped_events(cluster: Any, namespace: str, pod: str) -> list[dict[str, Any]]:
    items = cluster.get_json(
        "-n", namespace, "events", "--field-selector", f"involvedObject.name={pod},reason=InjectionSkipped"
    )["items"]
    return list(items)


def skipped_metric(port: int, namespace: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = f'refreshbus_operator_injection_skipped_total{{namespace="{namespace}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def wait_for_event(cluster: Any, namespace: str, pod: str, inj: Injector) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not (events := skipped_events(cluster, namespace, pod)):
        assert time.monotonic() < deadline, inj.log.read_text()[-3000:]
        time.sleep(0.2)
    (event,) = events
    return event


def test_a_pod_admitted_without_its_sidecar_gets_an_event_and_counts(
    cluster: Any, namespace: str, handlers: tuple[Injector, int]
) -> None:
    inj, port = handlers
    opt_in = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web-config"}
    cluster.kubectl("-n", namespace, "create", "configmap", "web-config", "--from-literal=a=b")
    plain = create_pod(cluster, namespace, "plain", {pods.ANN_CONFIGMAPS: "web-config"})
    asked = create_pod(cluster, namespace, "asked", opt_in)
    assert not asked["spec"].get("initContainers")  # no webhook: admitted as it is

    event = wait_for_event(cluster, namespace, "asked", inj)
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Pod"
    assert event["involvedObject"]["uid"] == asked["metadata"]["uid"]
    assert "asks for the refreshbus sidecar" in event["message"]
    assert "would inject it" in event["message"]
    assert skipped_metric(port, namespace) == 1

    # Later events of the same pod are not reported again; another such pod is, with the
    # webhook's refusal as the reason (a boolean that is not one).
    cluster.kubectl("-n", namespace, "label", "pod", "asked", "touched=yes")
    create_pod(cluster, namespace, "asked-badly", {**opt_in, pods.ANN_INJECT: "yes"})
    second = wait_for_event(cluster, namespace, "asked-badly", inj)
    refusal = "would refuse the pod: refreshbus.io/inject: 'yes' is not \"true\" or \"false\""
    assert refusal in second["message"]
    deadline = time.monotonic() + 10
    while skipped_metric(port, namespace) != 2:
        assert time.monotonic() < deadline, skipped_metric(port, namespace)
        time.sleep(0.2)
    assert len(skipped_events(cluster, namespace, "asked")) == 1
    assert skipped_events(cluster, namespace, plain["metadata"]["name"]) == []
