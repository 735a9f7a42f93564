"""Protocol 1.1 ``sources[].keys`` with a real sidecar, a real API server and a real app."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import create_pod
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult, RefreshEvent

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration


def with_keys(event: RefreshEvent, *keys: str) -> RefreshEvent:
    return dataclasses.replace(event, sources=tuple(dataclasses.replace(s, keys=keys) for s in event.sources))


def test_only_a_change_in_the_named_keys_writes_and_reloads(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}', "b.txt": "b1"})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: node.process_pattern})
    sidecar = sidecars.start(pod, target_dir=shared, env={podc.ENV_FETCH_JITTER: "0"})
    loads = json.loads(node.get("/")[1])["loads"]
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 2}', "b.txt": "b1"})

    other = with_keys(make_event(namespace, [("ConfigMap", "settings", rv)]), "b.txt")
    bus.publish(other)
    ack = bus.wait_ack(other.id)

    assert ack.result is AckResult.UNCHANGED
    assert json.loads(node.get("/")[1])["loads"] == loads  # no signal
    assert (shared / "configmap-settings" / "config.json").read_text() == '{"v": 1}'  # nothing written

    named = with_keys(make_event(namespace, [("ConfigMap", "settings", rv)]), "config.json")
    bus.publish(named)
    ack = bus.wait_ack(named.id)

    assert ack.result is AckResult.OK
    assert json.loads(node.get("/")[1])["loads"] == loads + 1  # exactly one signal
    assert json.loads(node.get("/")[1])["config"] == {"v": 2}
    assert sidecar.metrics()['refreshbus_sidecar_reloads_total{result="success"}'] == 1
