"""Fixtures for the Helm chart tests: a real ``helm`` binary and rendered value sets.

``helm`` is built from the Go module proxy by hack/build-helm.sh (pinned, cached in
~/.cache/refreshbus/helm-<version>/bin) the first time it is needed; there is no skip path:
if it cannot be built, every test that needs it errors with the reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "refreshbus"
#: The value sets of the chart-testing matrix (charts/refreshbus/ci/*-values.yaml).
VALUE_SETS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
#: What `helm template` assumes about the cluster: the version the test API server runs.
KUBE_VERSION = "1.34.4"
RELEASE = "rb"
NAMESPACE = "refreshbus-system"

Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def helm() -> Path:
    """Path of the helm binary (built on first use; several minutes cold, cached after)."""
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "build-helm.sh")], capture_output=True, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        pytest.fail(
            "could not build helm with hack/build-helm.sh (needs Go and the Go module proxy):\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return Path(lines[-1])


def values_file(value_set: str) -> Path:
    return CHART / "ci" / f"{value_set}-values.yaml"


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """``render(value_set, *extra_args, namespace=..., include_crds=False)`` -> the manifests."""
    cache: dict[tuple[Any, ...], list[Manifest]] = {}

    def _render(
        value_set: str = "default", *extra: str, namespace: str = NAMESPACE, include_crds: bool = False
    ) -> list[Manifest]:
        key = (value_set, extra, namespace, include_crds)
        if key not in cache:
            args = [
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                namespace,
                "--kube-version",
                KUBE_VERSION,
                "-f",
                str(values_file(value_set)),
                *extra,
            ]
            if include_crds:
                args.append("--include-crds")
            out = run_helm(helm, *args).stdout
            cache[key] = [doc for doc in yaml.safe_load_all(out) if doc]
        return [dict(m) for m in cache[key]]

    return _render
