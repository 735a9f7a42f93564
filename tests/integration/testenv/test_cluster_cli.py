"""`make cluster-up` / `make cluster-down` for manual use: the CLI leaves a control plane
that kubectl talks to (CRDs installed) and a broker, reports them, and stops them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from refreshbus_testenv.binaries import bin_dir
from refreshbus_testenv.procs import free_port, port_open

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refreshbus_testenv", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=240, check=False, env={**os.environ, "PYTHONPATH": str(ROOT / "tests" / "testenv")},
    )


def test_cluster_up_gives_a_control_plane_kubectl_talks_to_and_down_stops_it(tmp_path: Path) -> None:
    api_port, amqp_port = free_port(), free_port()
    workdir = tmp_path / "cluster"
    try:
        started = cli("up", "--dir", str(workdir), "--api-port", str(api_port), "--amqp-port", str(amqp_port))
        assert started.returncode == 0, started.stderr
        state = json.loads((workdir / "state.json").read_text())
        assert f"export KUBECONFIG={state['kubeconfig']}" in started.stdout

        listed = subprocess.run([str(bin_dir() / "kubectl"), f"--kubeconfig={state['kubeconfig']}",
                                 "get", "cfr", "-A"], capture_output=True, text=True, check=False)
        assert listed.returncode == 0, listed.stderr
        assert "No resources found" in listed.stdout + listed.stderr
        assert cli("status", "--dir", str(workdir)).returncode == 0
        again = cli("up", "--dir", str(workdir), "--api-port", str(api_port), "--amqp-port", str(amqp_port))
        assert "already running" in again.stdout
    finally:
        stopped = cli("down", "--dir", str(workdir))
    assert stopped.returncode == 0, stopped.stderr
    assert not port_open(api_port)
    assert not port_open(amqp_port)
    assert cli("status", "--dir", str(workdir)).returncode == 1
