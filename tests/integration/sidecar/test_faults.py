"""Bad input and faults: a clear error in the ack, nothing lost, the app untouched."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import create_pod
from refreshbus_support.privileges import require_root
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_wire import pods as podc
from refreshbus_wire import routing
from refreshbus_wire.events import AckResult, Action, Scope, Target

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration

NO_RELOAD = {podc.ENV_ACTION: "none"}
ROUTES_V1 = {"routes.conf": 'location = / { return 200 "v1\\n"; }\n'}


def visible_versions(source_dir: Path) -> list[str]:
    """Timestamped version directories in a kubelet-style source dir."""
    return sorted(p.name for p in source_dir.iterdir()
                  if p.name.startswith("..") and p.name not in {"..data", "..data_tmp"})


def test_a_deleted_configmap_acks_failed_and_the_previous_config_stays(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "web", ROUTES_V1)
    shared = tmp_path / "shared"
    nginx = apps.nginx(shared / "configmap-web")
    pod = create_pod(cluster, namespace, "web-0", configmaps=["web"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: nginx.process_pattern})
    sidecars.start(pod, target_dir=shared)
    bus.publish(first := make_event(namespace, [("ConfigMap", "web")]))
    assert bus.wait_ack(first.id).result is AckResult.UNCHANGED
    os.kill(nginx.pid, 1)  # let nginx read the initial config (it started before the sidecar wrote it)
    nginx.wait_for(lambda b: b == "v1\n")
    configs.delete(cluster, namespace, "ConfigMap", "web")

    event = make_event(namespace, [("ConfigMap", "web")])
    bus.publish(event)

    ack = bus.wait_ack(event.id)
    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "ConfigMap" in ack.error
    assert "not found" in ack.error
    assert (shared / "configmap-web" / "routes.conf").read_text().startswith("location")
    assert nginx.get("/") == (200, "v1\n")


def test_rbac_forbidden_acks_failed_with_the_reason(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "no-rights")
    token = cluster.kubectl("-n", namespace, "create", "token", "no-rights").stdout.strip()
    kubeconfig = tmp_path / "no-rights.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": cluster.server,
                                               "certificate-authority": str(cluster.pki / "ca.crt")}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action=NO_RELOAD)
    sidecar = sidecars.start(pod, kubeconfig=kubeconfig, wait_ready=False)
    sidecar.wait_consuming()

    event = make_event(namespace, [("ConfigMap", "settings")])
    bus.publish(event)

    ack = bus.wait_ack(event.id)
    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "forbidden" in ack.error
    assert "no-rights" in ack.error  # the API server's own reason names the service account
    status, body = sidecar.probe("/readyz")
    assert status == 503, body
    assert not (sidecar.target_dir / "configmap-settings").exists()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: can be filled up and remounted read-only (needs root + mount)."""
    require_root("mounting a tmpfs")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                   capture_output=True, text=True, check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("fault", ["read-only", "disk-full"])
def test_a_volume_that_cannot_be_written_acks_failed_and_leaves_no_partial_files(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus, small_tmpfs: Path, fault: str
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "old-a", "b": "old-b"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action=NO_RELOAD)
    sidecar = sidecars.start(pod, target_dir=small_tmpfs)
    source = small_tmpfs / "configmap-settings"
    before = visible_versions(source)
    if fault == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
        rv = configs.put_configmap(cluster, namespace, "settings", {"a": "new-a", "b": "new-b"})
        expected = "read-only file system"
    else:
        rv = configs.put_configmap(cluster, namespace, "settings",
                                   {"a": "new-a", "b": "x" * 300_000})  # more than the tmpfs holds
        expected = "disk full"

    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    ack = bus.wait_ack(event.id)
    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert expected in ack.error
    assert "previous config is still in place" in ack.error
    assert (source / "a").read_text() == "old-a"
    assert (source / "b").read_text() == "old-b"
    assert visible_versions(source) == before  # the half-written version was removed
    assert sidecar.probe("/livez")[0] == 200
    if fault == "read-only":
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)


def test_no_matching_process_acks_failed_and_is_not_retried_in_a_tight_loop(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: r"^no-such-app-[0-9a-f]{12}$"})
    sidecar = sidecars.start(pod)
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})

    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    ack = bus.wait_ack(event.id)
    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "no process matches" in ack.error
    assert "shareProcessNamespace" in ack.error
    assert (sidecar.target_dir / "configmap-settings" / "a").read_text() == "2"
    failures = 'refreshbus_sidecar_reloads_total{result="failure"}'
    window_end = time.monotonic() + 3.0
    while time.monotonic() < window_end:  # observe a 3 s window: retries back off (2 s, 4 s, ...)
        assert sidecar.metrics().get(failures, 0) <= 3
        time.sleep(0.2)
    assert sidecar.proc.poll() is None


def test_an_http_reload_answering_500_acks_failed_with_the_status(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}'})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={
        podc.ENV_ACTION: "http", podc.ENV_RELOAD_URL: f"http://127.0.0.1:{node.port}/-/reload"})
    sidecars.start(pod, target_dir=shared)
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": "{not json"})

    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    ack = bus.wait_ack(event.id)
    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "HTTP 500" in ack.error
    assert "invalid JSON" in ack.error  # the app's own reason is passed on
    assert node.running


def test_an_http_reload_that_hangs_acks_failed_after_the_timeout(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}'})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={
        podc.ENV_ACTION: "http", podc.ENV_RELOAD_URL: f"http://127.0.0.1:{node.port}/-/reload-slow",
        podc.ENV_RELOAD_TIMEOUT: "0.5"})
    sidecars.start(pod, target_dir=shared)
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 2}'})

    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    ack = bus.wait_ack(event.id)
    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "timed out after 0.5s" in ack.error


def test_an_event_action_overrides_the_pods_default(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}'})
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action=NO_RELOAD)
    sidecars.start(pod, target_dir=shared)
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 2}'})

    event = make_event(namespace, [("ConfigMap", "settings", rv)],
                       action=Action(type="http", method="POST", port=node.port, path="/-/reload"))
    bus.publish(event)

    assert bus.wait_ack(event.id).result is AckResult.OK
    assert json.loads(node.get("/")[1])["config"] == {"v": 2}


def test_malformed_oversized_unknown_version_and_foreign_messages_are_dropped(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action=NO_RELOAD)
    sidecar = sidecars.start(pod)
    key = routing.pod_key(namespace, "api-0")
    valid = make_event(namespace, [("ConfigMap", "settings")])
    foreign = make_event(namespace, [("ConfigMap", "settings")],
                         target=Target(scope=Scope.POD, namespace=namespace, name="someone-else"))
    unknown_version = valid.to_json()
    unknown_version["v"] = "2.0"
    bad = {
        b"\xff\xfe not json": "malformed",
        b"x" * (70 * 1024): "malformed",
        json.dumps(unknown_version).encode(): "malformed",
        b'{"v": "1.0", "type": "refresh", "id": "x"}': "malformed",
    }

    for body in bad:
        bus.publish_raw(body, key)
    bus.publish(foreign, key)  # mis-addressed: routed to us, but not for us
    not_managed = make_event(namespace, [("ConfigMap", "other")])
    bus.publish(not_managed, key)
    bus.publish(valid, key)

    assert bus.wait_ack(valid.id).result is AckResult.UNCHANGED  # still alive and consuming
    ack = bus.wait_ack(not_managed.id)
    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "not managed" in ack.error
    metrics = sidecar.metrics()
    assert metrics['refreshbus_sidecar_events_dropped_total{reason="malformed"}'] == 4
    assert metrics['refreshbus_sidecar_events_dropped_total{reason="foreign"}'] == 1
    assert bus.acks_for(foreign.id) == []
    assert sidecar.proc.poll() is None


def test_sigterm_stops_the_sidecar_within_a_second(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action=NO_RELOAD)
    sidecar = sidecars.start(pod)

    started = time.monotonic()
    sidecar.proc.terminate()
    code = sidecar.proc.wait(timeout=5)

    assert time.monotonic() - started < 1.0
    assert code == 0

