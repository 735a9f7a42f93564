"""Handling is idempotent by event id and by content hash: replays never signal twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import create_pod
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.procs import wait_until
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration


def test_a_duplicate_event_causes_one_signal_and_repeats_its_first_result(
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
    bus.publish(event)  # the same event id again (a redelivery: the first ack may have been lost)
    second = bus.wait_acks(event.id, 2)[1]
    replay = make_event(namespace, [("ConfigMap", "settings", rv)])  # new id, same content
    bus.publish(replay)
    third = bus.wait_ack(replay.id)

    assert first.result is AckResult.OK
    assert second.result is AckResult.OK  # it did apply this change
    assert third.result is AckResult.UNCHANGED
    assert first.config_hash == second.config_hash == third.config_hash
    assert json.loads(node.get("/")[1])["loads"] == loads + 1  # exactly one SIGHUP
    assert sidecar.metrics()['refreshbus_sidecar_reloads_total{result="success"}'] == 1


def test_an_event_whose_content_the_catch_up_after_a_reconnect_applied_acks_ok(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, running_broker: Broker, bus: TestBus,
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={podc.ENV_ACTION: "none"})
    sidecar = sidecars.start(pod)
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})
    issued_before = make_event(namespace, [("ConfigMap", "settings", rv)])  # its delivery is late

    close_connections(running_broker, f"refreshbus-sidecar {namespace}/api-0")
    wait_until(lambda: sidecar.metrics()["refreshbus_sidecar_reconnects_total"] == 1, 30,
               "the sidecar to reconnect", sidecar.proc, sidecar.log)
    wait_until(lambda: (sidecar.target_dir / "configmap-settings" / "a").read_text() == "2", 30,
               "the catch-up sync to apply the change", sidecar.proc, sidecar.log)
    bus.publish(issued_before)
    late = bus.wait_ack(issued_before.id)
    issued_after = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(issued_after)
    after = bus.wait_ack(issued_after.id)

    assert late.result is AckResult.OK  # the catch-up applied this very change
    assert after.result is AckResult.UNCHANGED
    assert late.config_hash == after.config_hash
    assert sidecar.metrics()['refreshbus_sidecar_reloads_total{result="success"}'] == 1  # the catch-up's


def close_connections(broker: Broker, connection_name: str) -> None:
    """Have the broker close every connection whose client calls itself ``connection_name``."""
    out = broker.ctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
    pids = [line.split("\t", 1)[0] for line in out.splitlines() if connection_name in line]
    assert pids, out
    for pid in pids:
        broker.ctl("close_connection", pid, "closed by the test")



@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_a_sidecar_restarted_over_current_content_neither_writes_nor_reloads(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path,
    kill: bool,
) -> None:
    """A sidecar container restart keeps the emptyDir: the new process finds the current
    content on disk, and its start-up, connect and periodic syncs must leave it (and the
    app) alone."""
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}'})
    configs.put_secret(cluster, namespace, "creds", {"password": b"s3cret"})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-r", configmaps=["settings"], secrets=["creds"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: node.process_pattern})
    env = {podc.ENV_FETCH_JITTER: "0", podc.ENV_RESYNC_INTERVAL: "1",
           podc.ENV_INPLACE_FILES: "configmap-settings/config.json"}
    first = sidecars.start(pod, target_dir=shared, env=env)
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 2}'})
    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)
    assert bus.wait_ack(event.id).result is AckResult.OK
    loads = json.loads(node.get("/")[1])["loads"]
    data = (shared / "configmap-settings" / "..data").readlink()
    if kill:
        first.proc.kill()
        first.proc.wait(5)
    else:
        first.stop()

    second = sidecars.start(pod, target_dir=shared, env=env)
    replay = make_event(namespace, [("ConfigMap", "settings", rv)])  # e.g. the operator's nudge
    bus.publish(replay)
    assert bus.wait_ack(replay.id).result is AckResult.UNCHANGED
    time.sleep(2.5)  # two periodic syncs

    assert json.loads(node.get("/")[1])["loads"] == loads  # no extra signal
    assert (shared / "configmap-settings" / "..data").readlink() == data  # nothing written
    metrics = second.metrics()
    assert metrics.get('refreshbus_sidecar_reloads_total{result="success"}', 0) == 0
    assert "wrote " not in second.log.read_text().split("starting")[-1]


def test_a_sidecar_restarted_after_dying_between_swap_and_reload_reloads_once(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, tmp_path: Path
) -> None:
    """The predecessor swapped the new content in but died before signalling: the record
    of what the app last loaded (``.loaded``) is behind the disk, so the successor reloads."""
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}'})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-d", configmaps=["settings"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: node.process_pattern})
    env = {podc.ENV_FETCH_JITTER: "0"}
    sidecars.start(pod, target_dir=shared, env=env).stop()
    loaded_v1 = (shared / ".loaded").read_text()
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 2}'})
    sidecars.start(pod, target_dir=shared, env=env).stop()  # wrote v2 and reloaded
    (shared / ".loaded").write_text(loaded_v1)  # ... as if it had died before reloading
    loads = json.loads(node.get("/")[1])["loads"]

    sidecar = sidecars.start(pod, target_dir=shared, env=env)
    time.sleep(1)  # the connect sync after the start-up one

    assert json.loads(node.get("/")[1])["loads"] == loads + 1
    assert sidecar.metrics()['refreshbus_sidecar_reloads_total{result="success"}'] == 1
    assert (shared / ".loaded").read_text() != loaded_v1
