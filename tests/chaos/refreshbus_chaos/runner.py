"""Play a chaos plan against a :class:`~refreshbus_chaos.world.World` and check the invariants.

The main thread plays the refresh rounds; a second thread injects each round's fault at its
offset (one fault at a time: a fault waits for the previous one's recovery and canary), so
edits and applies land before, during and after faults. Invariants, each a hard failure
(a line in :attr:`Report.violations`):

1. every change reaches every pod's app within ``round_timeout`` seconds, faults or not
   (each fault is over well within it; the sidecars' periodic re-sync, 300 s, is not what is
   measured), and after the faults stop every app runs its ConfigMap's newest content within
   ``converge_bound`` seconds;
2. no app is reloaded without a content change, never reads a torn or unknown version, and
   never goes back to an older one;
3. every ConfigRefresh reaches a final phase; its counts add up, its targets are the
   workload's pods, and every pod it counts as succeeded really loaded the content it acked
   (``ok``: reloaded it; ``unchanged``: had loaded it), no older than the change that
   triggered it; auto-refresh creates at most one ConfigRefresh per edit (more means two
   replicas acted on one edit);
4. the operator is never wedged: a canary refresh after each fault's recovery succeeds
   within ``canary_bound`` seconds;
5. no sidecar, app or operator process exits on its own.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from refreshbus_operator.settings import AUTO_REFRESH_LABEL
from refreshbus_wire.hashing import combined_hash, content_hash

from refreshbus_chaos.plan import CONFIG_KEY, FaultPlan, Plan, RoundPlan, content, make_plan
from refreshbus_chaos.world import NAMESPACE, Group, World

FINAL_PHASES = ("Succeeded", "PartiallyFailed", "Failed", "TimedOut")
#: deadlineSeconds of the explicit ConfigRefreshes (long enough to ride out any one fault).
DEADLINE = 60


@dataclass
class Options:
    seed: int
    rounds: int
    workdir: Path
    sidecars: int = 10
    #: Faults over the run (default: one every three rounds, at least one of each kind).
    faults: int | None = None
    #: Invariant 1: a round's change is on every pod within this, whatever fault is going on.
    round_timeout: float = 90.0
    #: Invariant 1: after the faults stop, every pod runs the newest content within this.
    converge_bound: float = 60.0
    #: Invariant 4: a canary refresh succeeds within this after each fault's recovery.
    canary_bound: float = 60.0
    #: Stop playing rounds at the first violation (the checks after the faults still run).
    fail_fast: bool = False


@dataclass
class Report:
    options: Options
    rounds: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    convergence: list[float] = field(default_factory=list)
    unconverged_rounds: list[int] = field(default_factory=list)
    canaries: list[float] = field(default_factory=list)
    final_convergence: float | None = None
    phases: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    duration: float = 0.0

    def table(self) -> str:
        o = self.options
        total_faults = sum(self.faults.values())
        rows = [
            ("seed", str(o.seed)),
            ("sidecars", f"{o.sidecars} (real processes, each reloading a journaling Node app)"),
            ("rounds", f"{sum(self.rounds.values())}: {_counts(self.rounds)}"),
            ("faults", f"{total_faults}: {_counts(self.faults)}"),
            ("canaries", f"{len(self.canaries)} of {total_faults} succeeded; {_spread(self.canaries)}"),
            ("convergence", f"{len(self.convergence)} rounds measured; {_spread(self.convergence)}; "
                            f"not converged within {o.round_timeout:.0f}s: {len(self.unconverged_rounds)}"),
            ("final convergence", f"{_secs(self.final_convergence)} after the faults stopped "
                                  f"(bound {o.converge_bound:.0f}s)"),
            ("ConfigRefreshes", f"{sum(self.phases.values())}: {_counts(self.phases)}"),
            ("pod results", _counts(self.results)),
            ("violations", str(len(self.violations))),
            ("duration", f"{self.duration:.0f}s"),
            ("reproduce", f"make chaos CHAOS_ARGS='--seed {o.seed} --rounds {o.rounds} "
                          f"--sidecars {o.sidecars}"
                          + (f" --faults {o.faults}" if o.faults is not None else "") + "'"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines += [f"  VIOLATION: {v}" for v in self.violations]
        return "\n".join(lines)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "p50 - p99 - max -"
    return (f"p50 {percentile(values, 50):.2f}s p99 {percentile(values, 99):.2f}s "
            f"max {max(values):.2f}s")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items())) or "none"


@cache
def _app_hash(seed: int, configmap: str, version: int) -> str:
    """What the app records for a version: SHA-256 of the config.json text."""
    import hashlib

    return hashlib.sha256(content(seed, configmap, version)[CONFIG_KEY].encode()).hexdigest()


@cache
def _ack_hash(seed: int, configmap: str, version: int) -> str:
    """What a sidecar acks for a version (its ``configHash``: the sidecar's own function)."""
    files = {k: v.encode() for k, v in content(seed, configmap, version).items()}
    return combined_hash([content_hash("ConfigMap", configmap, files)])


class Chaos:
    def __init__(self, options: Options, log: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.plan: Plan = make_plan(options.seed, options.rounds, faults=options.faults,
                                    sidecars=options.sidecars)
        options.workdir.mkdir(parents=True, exist_ok=True)
        self._timeline = (options.workdir / "timeline.log").open("a")
        self._print = log or print
        self._t0 = time.monotonic()
        self.world = World(options.workdir, options.seed, options.sidecars, self.log)
        self.report = Report(options)
        self._lock = threading.Lock()
        #: Edits of the auto-refresh workload's ConfigMap.
        self._edits = 0
        #: Explicit ConfigRefresh name -> the version its pods must have loaded at least.
        self._oldest_allowed: dict[str, int] = {}

    # -- logging and violations ---------------------------------------------------------

    def log(self, text: str) -> None:
        line = f"[{time.monotonic() - self._t0:7.1f}s] {text}"
        with self._lock:
            self._timeline.write(line + "\n")
            self._timeline.flush()
            self._print(line)

    def violation(self, text: str) -> None:
        with self._lock:
            self.report.violations.append(text)
        self.log(f"VIOLATION: {text}")

    # -- the run -------------------------------------------------------------------------

    def run(self) -> Report:
        self.log(f"chaos run: seed {self.options.seed}, {len(self.plan.rounds)} rounds, "
                 f"{len(self.plan.faults)} faults, {self.options.sidecars} sidecars; "
                 f"logs in {self.options.workdir}")
        try:
            self.world.up()
            self.log("everything is up; playing the plan")
            self._play()
            self._final_checks()
        finally:
            self.report.duration = time.monotonic() - self._t0
            try:
                self.world.down()
            finally:
                self.log("\n" + self.report.table())
                self._timeline.close()
        return self.report

    def _play(self) -> None:
        faults: queue.Queue[tuple[FaultPlan, float] | None] = queue.Queue()
        thread = threading.Thread(target=self._fault_loop, args=(faults,), name="chaos-faults", daemon=True)
        thread.start()
        try:
            for rp in self.plan.rounds:
                if self.options.fail_fast and self.report.violations:
                    self.log(f"stopping after round {rp.index - 1}: --fail-fast")
                    break
                if rp.fault is not None:
                    # Rounds wait for the previous fault (and its canary) to be over, so the
                    # faults stay spread over the rounds instead of queueing up behind them.
                    faults.join()
                    faults.put((rp.fault, time.monotonic() + rp.fault.offset))
                self._round(rp)
        except BaseException:
            faults.put(None)  # aborted (Ctrl-C, SIGTERM, a broken driver): tear down now
            raise
        faults.put(None)
        thread.join()
        self.log("faults stopped")

    # -- faults and canaries -----------------------------------------------------------

    def _fault_loop(self, faults: queue.Queue[tuple[FaultPlan, float] | None]) -> None:
        while (item := faults.get()) is not None:
            try:
                self._fault(*item)
            finally:
                faults.task_done()

    def _fault(self, fault: FaultPlan, at: float) -> None:
        time.sleep(max(0.0, at - time.monotonic()))
        self.log(f"fault: {fault.describe()}")
        try:
            hit = self.world.inject(fault)
        except Exception as exc:
            self.violation(f"fault {fault.kind}: could not recover: {exc}\n{traceback.format_exc()}")
            return
        with self._lock:
            self.report.faults[fault.kind] += 1
        self.log(f"recovered from {fault.kind} ({hit})")
        try:
            self._canary(fault.kind)
        except Exception as exc:
            self.violation(f"canary after {fault.kind} could not run: {exc}")

    def _canary(self, after: str) -> None:
        group = self.world.groups["canary"]
        name = f"canary-{sum(self.report.faults.values())}"
        group.version += 1
        self.world.put_version(group)
        started = time.monotonic()
        self.world.apply_refresh(name, {
            "sources": [{"configMap": {"name": group.configmap}}],
            "target": {"workload": {"kind": "Deployment", "name": group.name}},
            "deadlineSeconds": int(self.options.canary_bound)})
        self._oldest_allowed[name] = group.version
        obj = self._wait_final(name, self.options.canary_bound + 15)
        phase = obj.get("status", {}).get("phase")
        if phase != "Succeeded":
            self.violation(f"canary {name} after {after}: {phase or 'no phase'} after "
                           f"{time.monotonic() - started:.0f}s, not Succeeded (operator wedged?): "
                           f"{obj.get('status', {}).get('message')}; replicas' liveness: "
                           f"{self.world.liveness()}")
            return
        elapsed = time.monotonic() - started
        with self._lock:
            self.report.canaries.append(elapsed)
        self.log(f"canary {name} Succeeded in {elapsed:.2f}s")

    def _wait_final(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.world.refresh(name)
            if obj.get("status", {}).get("phase") in FINAL_PHASES:
                return obj
            time.sleep(0.2)
        return obj

    # -- rounds ----------------------------------------------------------------------------

    def _bump(self, group: Group) -> None:
        group.version += 1
        self.world.put_version(group)

    def _round(self, rp: RoundPlan) -> None:
        self.report.rounds[rp.kind] += 1
        groups = self.world.groups
        if rp.kind == "edit":
            group = groups["web"]
            for _ in range(rp.edits):
                self._bump(group)
                self._edits += 1
            self._converge(rp, group, time.monotonic())
            return
        group = groups["api"]
        name = f"api-{rp.index}"
        spec: dict[str, Any] = {"sources": [{"configMap": {"name": group.configmap}}],
                                "target": {"workload": {"kind": "Deployment", "name": group.name}},
                                "deadlineSeconds": DEADLINE}
        self._bump(group)
        changed = time.monotonic()
        self.world.apply_refresh(name, spec)
        if rp.kind == "apply":
            self._oldest_allowed[name] = group.version
            self._converge(rp, group, changed)
        elif rp.kind == "respec":
            time.sleep(rp.pause)
            self._bump(group)
            changed = time.monotonic()
            self.world.apply_refresh(name, {**spec, "target": {"selector": {"matchLabels": group.labels}},
                                            "deadlineSeconds": DEADLINE + 1})
            self._oldest_allowed[name] = group.version
            self._converge(rp, group, changed)
        elif rp.kind == "delete":
            time.sleep(rp.pause)
            self.world.kubectl("-n", NAMESPACE, "delete", "configrefresh", name, "--ignore-not-found")
            self.log(f"round {rp.index} delete: {name} deleted mid-round (v{group.version})")
        else:
            raise ValueError(f"unknown round kind {rp.kind!r}")

    def _current(self, group: Group) -> dict[str, int | None]:
        """Pod -> the version its app runs (its last clean load)."""
        out: dict[str, int | None] = {}
        for m in group.members:
            clean = [e for e in m.loads() if not e.get("torn")]
            out[m.name] = clean[-1]["version"] if clean else None
        return out

    def _wait_converged(self, group: Group, since: float, timeout: float) -> float | None:
        deadline = since + timeout
        while True:
            if all(v == group.version for v in self._current(group).values()):
                return time.monotonic() - since
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def _converge(self, rp: RoundPlan, group: Group, since: float) -> None:
        elapsed = self._wait_converged(group, since, self.options.round_timeout)
        if elapsed is None:
            self.report.unconverged_rounds.append(rp.index)
            self.violation(f"round {rp.index} {rp.kind}: {group.name} pods not at v{group.version} "
                           f"{self.options.round_timeout:.0f}s after the change: {self._current(group)}")
            return
        self.report.convergence.append(elapsed)
        self.log(f"round {rp.index} {rp.kind}: {group.name} v{group.version} on every pod in {elapsed:.2f}s")

    # -- the checks after the faults stopped --------------------------------------------

    def _final_checks(self) -> None:
        stopped = time.monotonic()
        worst = 0.0
        for group in self.world.groups.values():
            elapsed = self._wait_converged(group, stopped, self.options.converge_bound)
            if elapsed is None:
                self.violation(f"{group.name}: pods not at v{group.version} (the ConfigMap's content) "
                               f"{self.options.converge_bound:.0f}s after the faults stopped: "
                               f"{self._current(group)}")
            else:
                worst = max(worst, elapsed)
        self.report.final_convergence = worst
        self.log(f"final convergence in {worst:.2f}s")

        refreshes = self._wait_all_final(DEADLINE + self.options.converge_bound)
        for obj in refreshes:
            self._check_refresh(obj)
        auto = [o for o in refreshes if (o["metadata"].get("labels") or {}).get(AUTO_REFRESH_LABEL)]
        if len(auto) > self._edits:
            self.violation(f"{len(auto)} auto-created ConfigRefreshes for {self._edits} edits: some edit "
                           f"was refreshed twice (two replicas acting?)")
        for group in self.world.groups.values():
            for member in group.members:
                self._check_journal(group, member.name, member.loads())
        for dead in self.world.dead_processes():
            self.violation(dead)

    def _wait_all_final(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            items = self.world.refreshes()
            pending = [i for i in items if i.get("status", {}).get("phase") not in FINAL_PHASES]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for obj in pending:
            status = obj.get("status", {})
            self.violation(f"ConfigRefresh {obj['metadata']['name']} never reached a final phase "
                           f"(phase {status.get('phase')!r}, {status.get('message')!r})")
        return [i for i in items if i not in pending]

    def _check_refresh(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status", {})
        phase = status["phase"]
        self.report.phases[phase] += 1
        configmap = obj["spec"]["sources"][0]["configMap"]["name"]
        group = next(g for g in self.world.groups.values() if g.configmap == configmap)
        results = status.get("results") or []
        counts = status.get("counts") or {}
        for r in results:
            self.report.results[r["result"]] += 1
        good = [r for r in results if r["result"] in ("ok", "unchanged")]
        bad = [r for r in results if r["result"] not in ("ok", "unchanged")]
        where = f"ConfigRefresh {name} ({phase})"
        if status.get("resultsTruncated"):
            self.violation(f"{where}: results truncated with only {len(group.members)} pods")
            return
        pods = {m.name for m in group.members}
        if not results:
            self.violation(f"{where} has no pod results (every pod of {group.name} is Running): "
                           f"{status.get('message')}")
            return
        if {r["pod"] for r in results} != pods or len(results) != len(pods):
            self.violation(f"{where}: results for {sorted(r['pod'] for r in results)}, "
                           f"the workload's pods are {sorted(pods)}")
        if (counts.get("targets"), counts.get("succeeded"), counts.get("failed")) != (
                len(results), len(good), len(bad)):
            self.violation(f"{where}: counts {counts} do not add up to its {len(results)} results "
                           f"({len(good)} ok/unchanged, {len(bad)} failed/timeout)")
        if (phase == "Succeeded") != (not bad and len(good) == len(pods)):
            self.violation(f"{where}: phase does not match its results {[r['result'] for r in results]}")
        members = {m.name: m for m in group.members}
        versions = {_ack_hash(self.options.seed, configmap, v): v for v in range(1, group.version + 1)}
        for r in good:
            version = versions.get(r.get("configHash") or "")
            if version is None:
                self.violation(f"{where}: {r['pod']} acked {r['result']} for content never written "
                               f"({r.get('configHash')})")
                continue
            loads = [e for e in members[r["pod"]].loads() if not e.get("torn") and e["version"] == version]
            reloads = [e for e in loads if e["why"] != "start"]
            if r["result"] == "ok" and not reloads:
                self.violation(f"{where}: {r['pod']} acked ok for v{version}, its app never reloaded it")
            elif not loads:
                self.violation(f"{where}: {r['pod']} acked unchanged for v{version}, its app never loaded it")
            oldest = self._oldest_allowed.get(name)
            if oldest is not None and version < oldest:
                self.violation(f"{where}: {r['pod']} acked v{version}, older than v{oldest} (applied for)")

    def _check_journal(self, group: Group, pod: str, loads: list[dict[str, Any]]) -> None:
        previous: dict[str, Any] | None = None
        for e in loads:
            what = f"{pod}: load {e['n']} ({e['why']} at {e['at']:.3f})"
            if e.get("torn"):
                self.violation(f"{what}: torn read: {e['torn']}")
                continue
            version = e.get("version")
            if not isinstance(version, int) or e["hash"] != _app_hash(self.options.seed, group.configmap,
                                                                      version):
                self.violation(f"{what}: content of no version ever written (version {version!r})")
                continue
            if previous is not None:
                if version == previous["version"]:
                    self.violation(f"{what}: reloaded without a content change (v{version} again)")
                elif version < previous["version"]:
                    self.violation(f"{what}: went back from v{previous['version']} to v{version}")
            previous = e


def run(options: Options, log: Callable[[str], None] | None = None) -> Report:
    return Chaos(options, log).run()
