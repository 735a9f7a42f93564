"""The operator process itself: liveness endpoint with the broker state, clean SIGTERM."""

from __future__ import annotations

import json
import urllib.request

import pytest
from opharness import wait_for
from refreshbus_testenv.procs import free_port

pytestmark = pytest.mark.integration


def test_liveness_reports_the_broker_connections_and_sigterm_exits_cleanly(start_operator):
    port = free_port()
    op = start_operator("--standalone", "--liveness", f"http://127.0.0.1:{port}/healthz")

    def probe() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return json.loads(resp.read()) if resp.status == 200 else None
        except OSError:
            return None

    body = wait_for(probe, 20, "the liveness endpoint")
    assert set(body["broker"]) == {"publisher", "consumer"}
    wait_for(lambda: op.metrics().get('refreshbus_operator_broker_connected{role="publisher"}') == 1, 20,
             "the publisher connection")
    assert op.metrics()['refreshbus_operator_broker_connected{role="consumer"}'] == 0  # idle: no rounds
    assert op.stop() == 0
