"""``python -m refreshbus_chaos`` (``make chaos``): one seeded chaos run, its table on stdout.

Exit status 0 when no invariant was violated, 1 otherwise. Logs of every process and the
timeline stay in ``--workdir`` (default ``.chaos/seed-<seed>``, emptied first).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
from pathlib import Path

from refreshbus_chaos.runner import Options, run

ROOT = Path(__file__).resolve().parents[3]


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refreshbus_chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None,
                        help="schedule seed (default: a random one, printed)")
    parser.add_argument("--rounds", type=int, default=200, help="refresh rounds (default 200)")
    parser.add_argument("--sidecars", type=int, default=10, help="sidecar processes, >= 4 (default 10)")
    parser.add_argument("--faults", type=int, default=None,
                        help="faults over the run (default: one every 3 rounds, at least one of each kind)")
    parser.add_argument("--converge-bound", type=float, default=60.0,
                        help="seconds after the faults stop within which every pod must run the "
                             "newest content")
    parser.add_argument("--canary-bound", type=float, default=60.0,
                        help="seconds within which the canary refresh after each fault must succeed")
    parser.add_argument("--fail-fast", action="store_true",
                        help="stop playing rounds at the first violation (then check and tear down)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where logs go (default .chaos/seed-<seed>)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.sidecars < 4:
        parser.error("--rounds must be >= 1 and --sidecars >= 4")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    workdir = args.workdir or ROOT / ".chaos" / f"seed-{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    # SIGTERM (and SIGINT, which a background job ignores) unwind through the runner's
    # clean-up, so no broker, API server or sidecar outlives the run.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupted)
    report = run(Options(seed=seed, rounds=args.rounds, workdir=workdir, sidecars=args.sidecars,
                         faults=args.faults, converge_bound=args.converge_bound,
                         canary_bound=args.canary_bound, fail_fast=args.fail_fast))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
