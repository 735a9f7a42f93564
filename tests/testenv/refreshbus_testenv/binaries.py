"""Kubernetes binaries: built once per machine from the Go module proxy, then cached.

The build itself is hack/build-k8s-binaries.sh (also usable on its own); this module
only knows where the cache is and asks the script for what is missing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from refreshbus_testenv.procs import InfraError

ROOT = Path(__file__).resolve().parents[3]
#: Kubernetes version of every binary; 1.34 is the newest whose kubelet runs on cgroup v1.
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")


def cache_dir() -> Path:
    """Where built binaries live: ``$REFRESHBUS_CACHE`` or ``~/.cache/refreshbus``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "refreshbus"
    return Path(os.environ.get("REFRESHBUS_CACHE", default))


def bin_dir() -> Path:
    return cache_dir() / f"k8s-{K8S_VERSION}" / "bin"


def ensure_binaries(components: Sequence[str]) -> Path:
    """Return the directory holding ``components``, building what is missing."""
    directory = bin_dir()
    if all((directory / c).exists() for c in components):
        return directory
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-k8s-binaries.sh"), *components],
        env={**os.environ, "K8S_VERSION": K8S_VERSION, "REFRESHBUS_CACHE": str(cache_dir())},
        check=False,
    )
    if proc.returncode != 0:
        raise InfraError(f"building {', '.join(components)} {K8S_VERSION} failed (see output above)")
    return directory


def ensure_addon(name: str) -> Path:
    """A cluster add-on's binary (``coredns``, ``local-path-provisioner``), built once per
    machine from its pinned Go module by hack/build-cluster-addons.sh."""
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-cluster-addons.sh"), name],
        env={**os.environ, "REFRESHBUS_CACHE": str(cache_dir())},
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise InfraError(f"building {name} failed (see output above)")
    return Path(proc.stdout.split()[-1])
