"""The short seeded chaos run (``make test``); ``make chaos`` runs the long one.

Same engine, same invariants, fewer rounds: every fault kind once, 10 real sidecars, two
operator replicas, its own RabbitMQ and kube-apiserver (the faults kill and restart them,
so they are not the session's shared ones). A failure prints the table, every violation
and where the logs are; ``make chaos CHAOS_ARGS='--seed ... --rounds ...'`` replays it.
"""

from __future__ import annotations

import os

import pytest
from refreshbus_chaos.runner import Options, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SEED = int(os.environ.get("REFRESHBUS_CHAOS_SEED", "20261202"))
ROUNDS = int(os.environ.get("REFRESHBUS_CHAOS_ROUNDS", "20"))


def test_short_chaos_run_keeps_every_invariant(tmp_path):
    report = run(Options(seed=SEED, rounds=ROUNDS, sidecars=10, workdir=tmp_path / "chaos"))
    assert sum(report.faults.values()) >= 9, report.table()
    assert not report.violations, f"\n{report.table()}\nlogs: {tmp_path / 'chaos'}"
