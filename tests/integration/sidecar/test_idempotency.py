"""Handling is idempotent by event id and by content hash: replays never signal twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import create_pod
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration


def test_a_duplicate_event_causes_one_signal_and_acks_unchanged(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}'})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: node.process_pattern})
    sidecar = sidecars.start(pod, target_dir=shared)
    loads = json.loads(node.get("/")[1])["loads"]
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 2}'})
    event = make_event(namespace, [("ConfigMap", "settings", rv)])

    bus.publish(event)
    first = bus.wait_ack(event.id)
    bus.publish(event)  # the same event id again (a redelivery or an operator replay)
    second = bus.wait_acks(event.id, 2)[1]
    replay = make_event(namespace, [("ConfigMap", "settings", rv)])  # new id, same content
    bus.publish(replay)
    third = bus.wait_ack(replay.id)

    assert first.result is AckResult.OK
    assert second.result is AckResult.UNCHANGED
    assert third.result is AckResult.UNCHANGED
    assert first.config_hash == second.config_hash == third.config_hash
    assert json.loads(node.get("/")[1])["loads"] == loads + 1  # exactly one SIGHUP
    assert sidecar.metrics()['refreshbus_sidecar_reloads_total{result="success"}'] == 1

