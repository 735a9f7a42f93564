"""The operator process itself: liveness endpoint with the broker state, clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
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


#: Makes the publisher's task die on SIGUSR1 and the ack consumer's on SIGUSR2, as an
#: unexpected error would.
WORKERS_DIE_ON_SIGNAL = """
import asyncio, signal
from refreshbus_operator.acks import AckConsumer
from refreshbus_operator.publishing import Publisher

def dies_on(signum, cls, method):
    original = getattr(cls, method)
    async def run(self):
        died = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signum, died.set)
        work = asyncio.ensure_future(original(self))
        await died.wait()
        work.cancel()
        raise RuntimeError("injected fault")
    setattr(cls, method, run)

dies_on(signal.SIGUSR1, Publisher, "_keep")
dies_on(signal.SIGUSR2, AckConsumer, "_run")
"""


@pytest.mark.parametrize(
    ("signum", "worker"), [(signal.SIGUSR1, "publisher"), (signal.SIGUSR2, "ack consumer")]
)
def test_liveness_fails_when_a_broker_worker_dies(start_operator, signum, worker):
    port = free_port()
    op = start_operator("--standalone", "--liveness", f"http://127.0.0.1:{port}/healthz",
                        inject=WORKERS_DIE_ON_SIGNAL)

    def status() -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    wait_for(lambda: status() == 200, 20, "a healthy liveness endpoint")
    assert op.proc is not None
    os.kill(op.proc.pid, signum)
    # kopf caches a successful probe for 10 s; a failing one is not cached.
    wait_for(lambda: status() == 500, 25, f"liveness to fail once the {worker} died")
    assert f"dead or stuck: {worker}" in op.text()
