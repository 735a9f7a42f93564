"""The main loop survives its own bugs: an unexpected exception in a sync costs a retry
with backoff and a clear probe detail, never the sidecar process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refreshbus_sidecar.config import load
from refreshbus_sidecar.health import State
from refreshbus_sidecar.metrics import Metrics
from refreshbus_sidecar.service import Service
from refreshbus_wire import pods as podc


class CrashingRefresher:
    ready = False

    def sync(self, why: str, *, jitter: bool = False) -> Any:
        raise KeyError("data")  # stands for any bug on the sync path


def test_a_crash_inside_a_sync_is_retried_later_and_reported_not_fatal(tmp_path: Path) -> None:
    settings = load({
        podc.ENV_NAMESPACE: "shop", podc.ENV_POD_NAME: "orders-1", podc.ENV_CONFIGMAPS: "cfg",
        podc.ENV_BROKER_URLS: "amqp://u:p@127.0.0.1:5672/", podc.ENV_TARGET_DIR: str(tmp_path),
    })
    state = State(max_age=30)
    service = Service(settings, CrashingRefresher(), bus=None, state=state, metrics=Metrics())  # type: ignore[arg-type]

    service._sync("started")

    assert state.ready is False
    assert "internal error in the sidecar: KeyError" in state.detail
    assert "retrying in" in state.detail
