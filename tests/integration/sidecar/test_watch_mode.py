"""``refreshbus-sidecar watch``: no broker; reload the app when a watched directory's
content really changes. A kubelet ``..data`` swap counts as one change."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from refreshbus_support.apps import App
from refreshbus_support.pods import create_pod
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_wire import pods as podc

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration


def kubelet_write(volume: Path, files: dict[str, str], stamp: int) -> None:
    """What kubelet's AtomicWriter does to a projected ConfigMap volume."""
    tsdir = volume / f"..2026_01_01_00_00_{stamp:02d}.{os.getpid()}"
    tsdir.mkdir()
    for key, value in files.items():
        (tsdir / key).write_text(value)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(tsdir.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")
    for key in files:
        if not (volume / key).is_symlink():
            os.symlink(f"..data/{key}", volume / key)
    if old:
        for child in (volume / old).iterdir():
            child.unlink()
        (volume / old).rmdir()


def loads(app: App) -> int:
    return int(json.loads(app.get("/")[1])["loads"])


def assert_stays(app: App, expected: int, seconds: float) -> None:
    """Observe a window: the app's load count must stay at ``expected`` throughout."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert loads(app) == expected
        time.sleep(0.1)


def test_watch_mode_reloads_once_per_real_change_and_not_for_identical_content(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, tmp_path: Path
) -> None:
    volume = tmp_path / "projected"
    volume.mkdir()
    kubelet_write(volume, {"config.json": '{"v": 1}'}, 1)
    node = apps.node(volume / "config.json")
    pod = create_pod(cluster, namespace, "api-0", action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: node.process_pattern})
    sidecar = sidecars.start(pod, args=("watch", "--dir", str(volume), "--debounce-ms", "300"),
                             wait_ready=False)
    sidecar.wait_ready(consuming=False)
    assert loads(node) == 1

    kubelet_write(volume, {"config.json": '{"v": 2}'}, 2)
    node.wait_for(lambda body: json.loads(body)["config"] == {"v": 2})
    kubelet_write(volume, {"config.json": '{"v": 2}'}, 3)  # a swap with identical content
    assert_stays(node, 2, seconds=1.5)  # longer than the debounce: the batch was seen and ignored
    kubelet_write(volume, {"config.json": '{"v": 3}'}, 4)
    node.wait_for(lambda body: json.loads(body)["config"] == {"v": 3})

    assert loads(node) == 3  # start + one reload per real change
    assert_stays(node, 3, seconds=1.0)  # and nothing more trickles in afterwards
    assert sidecar.metrics()['refreshbus_sidecar_reloads_total{result="success"}'] == 2
    assert sidecar.probe("/livez")[0] == 200
    started = time.monotonic()
    assert sidecar.stop() == 0
    assert time.monotonic() - started < 1.5
