"""Tests that need root (mounts): CI runs as root, so there they must run; elsewhere a
developer without root gets a skip that says why."""

from __future__ import annotations

import os

import pytest


def require_root(why: str) -> None:
    """Skip the calling test without root -- but fail it under CI=true, where root is given
    and a skip would hide that the behaviour was never exercised."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":  # CI: never skip
        pytest.fail(f"{why}: needs root, and CI runs as root")
    pytest.skip(f"{why}: needs root")
