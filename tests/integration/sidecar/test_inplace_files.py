"""subPath file mounts: a real sidecar keeps an in-place copy of a key in one inode, so a
file bind mount of it (what kubelet makes of ``subPath``) serves the new content."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from refreshbus_support import apps as apps_mod
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import create_pod
from refreshbus_support.privileges import require_root
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.procs import free_port
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Path]:
    """A file bind mount, as kubelet makes for a subPath mount (root only)."""
    require_root("a file bind mount")
    target = tmp_path / "app-etc" / "config.json"
    target.parent.mkdir()
    target.write_text("placeholder")
    yield target
    subprocess.run(["umount", str(target)], check=False, capture_output=True)


def test_a_bind_mounted_in_place_file_serves_the_new_content_and_the_app_is_signalled_after(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path,
    bind_mount: Path,
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"config.json": '{"v": 1}', "other": "x"})
    shared = tmp_path / "shared"
    port = free_port()
    pattern = rf"config-server\.js {port} {re.escape(str(bind_mount))}$"
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: pattern})
    sidecar = sidecars.start(pod, target_dir=shared, env={
        podc.ENV_FETCH_JITTER: "0", podc.ENV_INPLACE_FILES: "configmap-settings/config.json"})
    inplace = shared / podc.inplace_path("ConfigMap", "settings", "config.json")
    assert inplace.read_text() == '{"v": 1}'  # in place before /readyz said 200
    subprocess.run(["mount", "--bind", str(inplace), str(bind_mount)], check=True)
    node = apps_mod.start_node_app(tmp_path / "node", bind_mount, port=port)
    apps.started.append(node)
    assert apps_mod.node_config(node) == {"v": 1}
    inode = inplace.stat().st_ino

    for version in (2, 3):  # longer, then the same length
        rv = configs.put_configmap(cluster, namespace, "settings",
                                   {"config.json": json.dumps({"v": version, "pad": "y" * version})})
        event = make_event(namespace, [("ConfigMap", "settings", rv)])
        bus.publish(event)
        assert bus.wait_ack(event.id).result is AckResult.OK

        # The SIGHUP came after the in-place write: the app re-read the new content. (The app
        # handles the signal on its own event loop, so the first GET may come before it.)
        expected = {"v": version, "pad": "y" * version}
        node.wait_for(lambda body, expected=expected: json.loads(body)["config"] == expected)
        assert json.loads(bind_mount.read_text())["v"] == version
    assert inplace.stat().st_ino == inode
    assert json.loads(node.get("/")[1])["loads"] == 3
    assert sidecar.metrics()['refreshbus_sidecar_reloads_total{result="success"}'] == 2


def test_a_reader_holding_the_file_open_sees_every_update_in_the_same_inode(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"app.yaml": "a: 1\nlong: " + "z" * 100 + "\n"})
    shared = tmp_path / "shared"
    pod = create_pod(cluster, namespace, "api-1", configmaps=["settings"])
    sidecars.start(pod, target_dir=shared, env={
        podc.ENV_FETCH_JITTER: "0", podc.ENV_INPLACE_FILES: "configmap-settings/app.yaml"})
    inplace = shared / podc.inplace_path("ConfigMap", "settings", "app.yaml")

    with open(inplace, "rb") as held:
        rv = configs.put_configmap(cluster, namespace, "settings", {"app.yaml": "a: 2\n"})  # shorter
        event = make_event(namespace, [("ConfigMap", "settings", rv)])
        bus.publish(event)
        assert bus.wait_ack(event.id).result is AckResult.OK

        held.seek(0)
        assert held.read() == b"a: 2\n"
        assert os.fstat(held.fileno()).st_ino == inplace.stat().st_ino
    assert (shared / "configmap-settings" / "app.yaml").read_text() == "a: 2\n"


def test_a_sidecar_restarted_over_a_stale_in_place_file_repairs_it(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"app.yaml": "a: 1\n"})
    shared = tmp_path / "shared"
    pod = create_pod(cluster, namespace, "api-2", configmaps=["settings"])
    env = {podc.ENV_FETCH_JITTER: "0", podc.ENV_INPLACE_FILES: "configmap-settings/app.yaml"}
    sidecars.start(pod, target_dir=shared, env=env).stop()
    inplace = shared / podc.inplace_path("ConfigMap", "settings", "app.yaml")
    inplace.write_text("a: stale\n")  # as if the sidecar died between the swap and the rewrite

    sidecars.start(pod, target_dir=shared, env=env)

    assert inplace.read_text() == "a: 1\n"
