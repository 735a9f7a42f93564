"""`pip install refreshbus` without an extra: the console scripts name the extra to install.

The extra's dependencies are hidden from a subprocess (a sitecustomize that makes their
import fail exactly as for a module that is not installed); the scripts run are the
console scripts pip generated from pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

HIDE = """
import importlib.abc, sys
HIDDEN = set({hidden!r})

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
"""


def run_script(tmp_path: Path, script: str, hidden: set[str], *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(HIDE.format(hidden=sorted(hidden)))
    return subprocess.run(
        [str(BIN / script), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(tmp_path)},
    )


#: Top-level modules of each extra's dependencies (pyproject.toml).
OPERATOR_EXTRA = {"kopf", "kubernetes", "pika", "prometheus_client", "yaml", "cryptography", "aiohttp"}
SIDECAR_EXTRA = {"pika", "watchfiles"}


@pytest.mark.parametrize("args", [["--help"], ["--standalone", "--broker-url", "amqp://u:p@h/"]])
def test_the_operator_script_without_its_extra_says_what_to_install(tmp_path: Path, args: list[str]) -> None:
    proc = run_script(tmp_path, "refreshbus-operator", OPERATOR_EXTRA, *args)

    assert proc.returncode == 2
    assert proc.stderr == (
        "refreshbus-operator: the 'operator' extra is not installed (no module named 'kopf'): "
        "pip install 'refreshbus[operator]'\n"
    )
    assert proc.stdout == ""


def test_the_sidecar_script_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    # The sidecar imports pika only when it starts for real, after reading its settings.
    env = {
        "REFRESHBUS_NAMESPACE": "shop", "REFRESHBUS_POD_NAME": "web-1", "REFRESHBUS_CONFIGMAPS": "web",
        "REFRESHBUS_BROKER_URLS": "amqp://u:p@127.0.0.1:1/%2F", "REFRESHBUS_HEALTH_PORT": "0",
        "REFRESHBUS_HEALTH_BIND": "", "REFRESHBUS_KUBECONFIG": str(tmp_path / "kubeconfig"),
    }
    (tmp_path / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n"
    )
    proc = run_script(tmp_path, "refreshbus-sidecar", SIDECAR_EXTRA, "run", env=env)

    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "refreshbus-sidecar: the 'sidecar' extra is not installed (no module named 'pika'): "
        "pip install 'refreshbus[sidecar]'"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", ["refreshbus-operator", "refreshbus-sidecar"])
def test_with_the_extras_installed_the_scripts_run(tmp_path: Path, script: str) -> None:
    proc = run_script(tmp_path, script, set(), "--help")

    assert proc.returncode == 0, proc.stderr
    assert script in proc.stdout
