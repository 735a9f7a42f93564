"""The short version of ``make fuzz``: 20,000 generated bad messages through the real
broker to a real sidecar and the real operator, real refreshes going on; nothing
crashes, nothing leaks, every message is counted where its category says, every real
refresh succeeds. The generator and the run are shared with bench/fuzz_bench.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from refreshbus_support.fuzz import harness

pytestmark = pytest.mark.e2e

MESSAGES = 20_000
SEED = int(os.environ.get("REFRESHBUS_FUZZ_SEED", "20261202"))


def test_twenty_thousand_bad_messages_are_counted_and_change_nothing(
    cluster: Any, running_broker: Any, namespace: str, tmp_path: Path
) -> None:
    report = harness.run(broker=running_broker, cluster=cluster, namespace=namespace, workdir=tmp_path,
                         messages=MESSAGES, seed=SEED)
    print(report.table())
    assert not report.violations, report.table()
    assert sum(report.sent.values()) == MESSAGES
    assert report.refreshes_ok >= 2
