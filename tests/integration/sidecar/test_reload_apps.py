"""A refresh event reaches a real sidecar, which swaps the new config in and reloads a
real, unmodified app: nginx (SIGHUP) and a Node.js server (SIGHUP or HTTP)."""

from __future__ import annotations

import json
import stat
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


def nginx_routes(body: str) -> dict[str, str]:
    return {"routes.conf": f'location = / {{ return 200 "{body}\\n"; }}\n'}


def test_nginx_serves_the_new_config_after_sighup_and_keeps_its_master_pid(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "web", nginx_routes("v1"))
    shared = tmp_path / "shared"
    nginx = apps.nginx(include_dir=shared / "configmap-web")
    pod = create_pod(cluster, namespace, "web-0", configmaps=["web"], action={
        podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP", podc.ENV_PROCESS: nginx.process_pattern})
    sidecars.start(pod, target_dir=shared)
    # nginx started before the config existed; the first reload (here, an event) makes it serve it
    rv = configs.put_configmap(cluster, namespace, "web", nginx_routes("v2"))
    master = nginx.pid

    event = make_event(namespace, [("ConfigMap", "web", rv)])
    bus.publish(event)

    ack = bus.wait_ack(event.id, pod="web-0")
    assert ack.result is AckResult.OK, ack.error
    assert ack.config_hash
    assert ack.config_hash.startswith("sha256:")
    assert ack.timings.written_ms is not None
    assert ack.timings.reloaded_ms is not None
    assert nginx.wait_for(lambda body: body == "v2\n") == "v2\n"
    assert nginx.pid == master
    assert nginx.running
    assert (shared / "configmap-web" / "routes.conf").read_text() == nginx_routes("v2")["routes.conf"]


def test_node_app_reloads_through_its_http_endpoint_and_the_ack_says_ok(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": json.dumps({"color": "red"})})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={
        podc.ENV_ACTION: "http", podc.ENV_RELOAD_URL: f"http://127.0.0.1:{node.port}/-/reload",
        podc.ENV_HEALTH_URL: f"http://127.0.0.1:{node.port}/healthz"})
    sidecars.start(pod, target_dir=shared)
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": json.dumps({"color": "blue"})})

    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    ack = bus.wait_ack(event.id, pod="api-0")
    assert ack.result is AckResult.OK, ack.error
    assert json.loads(node.get("/")[1])["config"] == {"color": "blue"}


def test_configmap_and_secret_in_one_event_are_applied_with_one_reload(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}'},
                          binary={"logo.bin": b"\x00\x01"})
    configs.put_secret(cluster, namespace, "creds", {"password": b"s3cret-1"})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], secrets=["creds"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: node.process_pattern})
    sidecars.start(pod, target_dir=shared)
    loads_before = json.loads(node.get("/")[1])["loads"]
    rv1 = configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 2}'},
                                binary={"logo.bin": b"\xff\xfe\x00"})
    rv2 = configs.put_secret(cluster, namespace, "creds", {"password": b"s3cret-2"})

    event = make_event(namespace, [("ConfigMap", "settings", rv1), ("Secret", "creds", rv2)])
    bus.publish(event)

    ack = bus.wait_ack(event.id, pod="api-0")
    assert ack.result is AckResult.OK, ack.error
    body = node.wait_for(lambda b: json.loads(b)["config"] == {"v": 2})
    assert json.loads(body)["loads"] == loads_before + 1  # one SIGHUP for both sources
    secret_file = shared / "secret-creds" / "password"
    assert secret_file.read_bytes() == b"s3cret-2"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o440
    assert (shared / "configmap-settings" / "logo.bin").read_bytes() == b"\xff\xfe\x00"
    assert stat.S_IMODE((shared / "configmap-settings" / "config.json").stat().st_mode) == 0o644
