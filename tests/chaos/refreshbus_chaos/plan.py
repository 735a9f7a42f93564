"""A seed -> the whole schedule of a chaos run, drawn up front from ``random.Random(seed)``.

Everything random is decided here, before any process starts, so a seed names one schedule
whatever the timing of the run: which round does what, which fault starts in which round,
how long it lasts and whom it hits. (Timing itself -- what a fault happens to interrupt --
varies from run to run; that is the point of running many rounds.)
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass

#: Refresh rounds. ``edit``: ConfigMap edit(s) of the auto-refresh workload (two edits inside
#: the debounce window sometimes); ``apply``: ConfigMap change + a new ConfigRefresh;
#: ``respec``: like apply, then a second change and a spec change mid-round (new generation);
#: ``delete``: like apply, then the ConfigRefresh is deleted mid-round.
ROUND_KINDS = ("edit", "apply", "respec", "delete")
ROUND_WEIGHTS = (4, 3, 2, 1)

#: Faults, each followed by its recovery and a canary refresh.
FAULT_KINDS = (
    "broker_kill",               # SIGKILL RabbitMQ, start it again
    "broker_restart",            # clean stop + start
    "broker_close_connections",  # rabbitmqctl close_connection on some client connections
    "apiserver_restart",         # kube-apiserver stopped and started (etcd kept)
    "operator_kill_active",      # SIGKILL the replica that holds the peering, restart it
    "operator_kill_standby",     # SIGKILL the paused replica, restart it
    "sidecar_kill",              # SIGKILL some sidecars, restart them
    "api_slow",                  # the API proxy delays every request
    "api_drop",                  # the API proxy swallows requests (black hole), then cuts them
)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    kind: str
    #: Seconds after the start of its round that the fault begins (it waits for the previous
    #: fault's recovery and canary first).
    offset: float
    #: Seconds the fault lasts before the recovery starts.
    hold: float
    #: Seeded picks, interpreted by the fault (sidecar indexes, connections to close).
    picks: tuple[int, ...] = ()
    #: Request delay of ``api_slow`` (seconds).
    delay: float = 0.0

    def describe(self) -> str:
        extra = f" picks={list(self.picks)}" if self.picks else ""
        extra += f" delay={self.delay:.1f}s" if self.delay else ""
        return f"{self.kind} hold={self.hold:.1f}s{extra}"


@dataclass(frozen=True, slots=True)
class RoundPlan:
    index: int
    kind: str
    #: ``edit``: how many edits in a row (2 = inside the debounce window).
    edits: int = 1
    #: ``respec``/``delete``: seconds between the apply and the mid-round change.
    pause: float = 0.0
    fault: FaultPlan | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    rounds: tuple[RoundPlan, ...]

    @property
    def faults(self) -> list[FaultPlan]:
        return [r.fault for r in self.rounds if r.fault is not None]


def make_plan(seed: int, rounds: int, *, faults: int | None = None, sidecars: int = 10) -> Plan:
    """``rounds`` refresh rounds with ``faults`` faults spread over them (default: one every
    three rounds; at least one of every kind when there are enough rounds). The last round
    of the explicit workload never deletes its ConfigRefresh, so the run ends with every
    source's newest content announced."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    rng = random.Random(seed)
    n_faults = faults if faults is not None else max(len(FAULT_KINDS), rounds // 3)
    n_faults = min(n_faults, rounds)
    kinds = list(FAULT_KINDS) * (n_faults // len(FAULT_KINDS))
    kinds += rng.sample(FAULT_KINDS, n_faults - len(kinds))
    rng.shuffle(kinds)
    # Faults start in distinct rounds, never in the last one (its recovery would overlap
    # the final convergence check).
    slots = sorted(rng.sample(range(max(1, rounds - 1)), min(n_faults, max(1, rounds - 1))))
    fault_at = dict(zip(slots, kinds, strict=False))

    planned = []
    for i in range(rounds):
        kind = rng.choices(ROUND_KINDS, ROUND_WEIGHTS)[0]
        fault = _fault(rng, fault_at[i], sidecars) if i in fault_at else None
        planned.append(RoundPlan(index=i, kind=kind, edits=1 + (rng.random() < 0.25),
                                 pause=round(rng.uniform(0.0, 1.5), 2), fault=fault))
    explicit = [r for r in planned if r.kind != "edit"]
    if explicit and explicit[-1].kind == "delete":
        last = explicit[-1]
        planned[last.index] = RoundPlan(last.index, "apply", last.edits, last.pause, last.fault)
    return Plan(seed=seed, rounds=tuple(planned))


def _fault(rng: random.Random, kind: str, sidecars: int) -> FaultPlan:
    offset = round(rng.uniform(0.0, 2.0), 2)
    if kind in ("api_slow", "api_drop"):
        hold = round(rng.uniform(3.0, 10.0), 1)
    else:
        hold = round(rng.uniform(0.0, 4.0), 1)
    picks: tuple[int, ...] = ()
    delay = 0.0
    if kind == "sidecar_kill":
        picks = tuple(sorted(rng.sample(range(sidecars), rng.randint(1, min(3, sidecars)))))
    elif kind == "broker_close_connections":
        picks = tuple(rng.randrange(1000) for _ in range(rng.randint(1, 4)))
    elif kind == "api_slow":
        delay = round(rng.uniform(0.5, 3.0), 1)
    return FaultPlan(kind=kind, offset=offset, hold=hold, picks=picks, delay=delay)


#: The key the apps load; it names the other keys (the parts) with their SHA-256, so an app
#: that read parts of two versions, or a short part, can tell (a "torn" read).
CONFIG_KEY = "config.json"


def content(seed: int, configmap: str, version: int) -> dict[str, str]:
    """The ``data`` of ``configmap`` at ``version``: ``config.json`` plus 2-4 parts of 200 B
    to 24 KiB, all deterministic in (seed, configmap, version)."""
    rng = random.Random(f"{seed}/{configmap}/{version}")
    parts = {}
    for i in range(rng.randint(2, 4)):
        body = "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(200, 24 * 1024)))
        parts[f"part-{i}.txt"] = f"{configmap} v{version} part {i}\n{body}\n"
    config = {"configmap": configmap, "version": version,
              "parts": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in parts.items()}}
    return {CONFIG_KEY: json.dumps(config, sort_keys=True), **parts}
