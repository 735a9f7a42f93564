"""A million bad messages: ``make fuzz`` (or ``.venv/bin/python bench/fuzz_bench.py``).

Starts its own RabbitMQ node and kube-apiserver (tests/testenv), then runs
:func:`refreshbus_support.fuzz.harness.run`: generated bad messages through the real broker
to a real sidecar (reloading a real app) and to the real operator's ack queue, with real
refreshes going on, and prints messages by category, what each process counted, RSS at
start/middle/end, throughput, real refreshes and the seed. Exits 1 on any violation.
The short version of the same run is tests/e2e/test_fuzz.py (``make test``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "testenv"), str(ROOT / "tests" / "support"),
                str(ROOT / "tests" / "integration" / "operator")]

from refreshbus_support.fuzz import harness  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000, help="how many (default: a million)")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000

    work = Path(tempfile.mkdtemp(prefix="refreshbus-fuzz-"))
    broker = Broker(work / "rabbitmq")
    cluster = ControlPlane(work / "k8s")
    try:
        print(f"seed {seed}; starting RabbitMQ and kube-apiserver in {work} ...", flush=True)
        broker.start()
        cluster.start()
        cluster.apply_crds()
        namespace = "fuzz"
        cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl("-n", namespace, "create", "serviceaccount", "default")
        report = harness.run(broker=broker, cluster=cluster, namespace=namespace, workdir=work / "run",
                             messages=args.messages, seed=seed, progress=lambda s: print(s, flush=True))
    finally:
        if args.keep:
            cluster.stop()
            broker.stop()
            print(f"kept {work}")
        else:
            cluster.destroy()
            broker.destroy()
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
