"""End-to-end refresh benchmark: N real sidecar processes, N real apps, auto-refresh on.

Run with ``make bench-e2e`` (or ``.venv/bin/python bench/e2e_bench.py [--pods 100]
[--edits 20] [--json out.json]``). It starts its own RabbitMQ node and kube-apiserver
(tests/testenv), the real ``refreshbus-operator`` process and, as ``make demo`` does, one
Deployment whose N pods are API objects, each with a real ``refreshbus-sidecar`` process and
a real Node.js app (tests/support/apps/config-server.js) that journals every config load with
its own timestamp. Acks carry each pod's bound service-account token (the operator verifies
them: ``REFRESHBUS_OPERATOR_ACK_IDENTITY=require``, the default). Operator and sidecars run
with their shipped defaults (auto-refresh debounce, fetch jitter) unless told otherwise.
Nothing here is a pass/fail test.

Each edit is one PATCH of the ConfigMap's data (``version: i``); the edit is done when every
app's journal records loading version i (inotify on the journals, no polling in the measured
path) and the operator has finished the round. Edits start at least the auto-refresh window
+ 0.5 s apart (an edit within the window of the previous refresh is gathered into a refresh
at the window's end, by design); the first (``--warmup``) is reported apart. Measured:

* edit -> every app has reloaded the new content (the last app's own load time), p50/p99;
* where that time goes, from the operator's log, each sidecar's ``refresh`` log line
  (``delivered_ms``, ``fetch_ms``, ``written_ms``, ``reloaded_ms``) and the apps' journals:
  edit -> operator saw it -> ConfigRefresh created -> round started -> event published ->
  sidecar received -> fetched + swapped -> app signalled -> app reloaded -> round finished
  (every ack in status);
* the sidecars' RSS (VmRSS), total and per sidecar, after start-up and after the edits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT / "tests" / "testenv"),
    str(ROOT / "tests" / "support"),
    str(ROOT / "tests" / "integration" / "operator"),
    str(ROOT / "sidecar"),
    str(ROOT / "bench"),
]

import kubernetes  # noqa: E402
from operator_bench import pct  # noqa: E402
from opharness import OperatorProc, wait_for  # noqa: E402
from refreshbus_operator.settings import Config as OperatorConfig  # noqa: E402
from refreshbus_sidecar.config import Settings  # noqa: E402
from refreshbus_support import configs  # noqa: E402
from refreshbus_support.fleet import Fleet, Member, apply_deployment, wait_loaded  # noqa: E402
from refreshbus_support.pods import Owner  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402
from refreshbus_wire import pods as podc  # noqa: E402

SHIPPED_JITTER: float = Settings.__dataclass_fields__["fetch_jitter"].default

NS = "bench"
WORKLOAD = "web"
#: kopf's plain log line: ``[2026-12-02 04:19:15,615] logger [INFO    ] message``.
OP_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \S+\s+\[\w+\s*\] (.*)$")


def config(version: int) -> dict[str, str]:
    return {"config.json": json.dumps({"version": version, "greeting": f"hello v{version}"})}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def rss_summary(members: Sequence[Member]) -> dict[str, float]:
    values = [rss_mib(m.sidecar.pid) for m in members if m.sidecar is not None]
    return {"total_mib": round(sum(values), 1), "mean_mib": round(statistics.fmean(values), 2),
            "max_mib": round(max(values), 2), "min_mib": round(min(values), 2)}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (RabbitMQ's VM runs under a wrapper)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def thread_cpu_seconds(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float]:
    out = {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}
    # The sidecar's main thread is its broker connection; the others are the refresh worker
    # (fetch, write, signal) and the idle health server.
    out["sidecars: connection thread"] = sum(thread_cpu_seconds(pid, pid) for pid in roles["sidecars"])
    return out


def operator_lines(op: OperatorProc) -> list[tuple[float, str]]:
    out = []
    for line in op.text().splitlines():
        m = OP_LINE.match(line)
        if m:
            # kopf logs local time (asctime): read it back as local time.
            at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((at, m[2]))
    return out


def first_line(lines: list[tuple[float, str]], after: float, match: Callable[[str], bool]
               ) -> tuple[float, str] | None:
    # Log timestamps have millisecond resolution: allow the edit's own millisecond.
    return next(((at, text) for at, text in lines if at >= after - 0.001 and match(text)), None)


def sidecar_refreshes(member: Member) -> dict[str, dict[str, Any]]:
    """event id -> the sidecar's ``refresh`` log record."""
    assert member.sidecar is not None
    out = {}
    for rec in member.sidecar.log_records():
        if str(rec.get("msg", "")).startswith("refresh ") and "event_id" in rec:
            out[rec["event_id"]] = rec
    return out


@dataclass
class Edit:
    version: int
    at: float
    #: name -> the app's journal entry for this version
    loads: dict[str, dict[str, Any]]


def stages(edit: Edit, lines: list[tuple[float, str]], refreshes: dict[str, dict[str, dict[str, Any]]]
           ) -> dict[str, float]:
    """Milliseconds from the edit to each step (per-pod steps: median and last pod)."""
    out: dict[str, float] = {}
    seen = first_line(lines, edit.at, lambda t: f"ConfigMap {NS}/app-config changed" in t)
    created = first_line(lines, edit.at, lambda t: t.startswith("auto-refresh: created ConfigRefresh"))
    if seen:
        out["operator saw the edit"] = seen[0]
    if created is None:
        return {k: (v - edit.at) * 1000 for k, v in out.items()}
    out["ConfigRefresh created"] = created[0]
    cfr = created[1].split()[3]
    started = first_line(lines, edit.at, lambda t: t.startswith(f"<Round {cfr} ") and t.endswith(" started"))
    finished = first_line(lines, edit.at, lambda t: t.startswith(f"<Round {cfr} ") and " finished: " in t)
    if started:
        out["round started"] = started[0]
        event_id = re.search(r"event=(\S+)>", started[1])
        per_pod: dict[str, list[float]] = {}
        durations: dict[str, list[float]] = {}
        for name, by_event in refreshes.items():
            rec = by_event.get(event_id[1]) if event_id else None
            if rec is None or rec.get("reloaded_ms") is None:
                continue
            received = datetime.fromisoformat(rec["received_at"]).timestamp()
            steps = {
                "event published": received - rec["delivered_ms"] / 1000,
                "sidecar received": received,
                "swapped (jitter + API GET + write)": received + rec["written_ms"] / 1000,
                "app signalled": received + rec["reloaded_ms"] / 1000,
                "app reloaded": edit.loads[name]["at"],
            }
            durations.setdefault("API GET (fetch_ms)", []).append(rec["fetch_ms"])
            durations.setdefault("jitter + write (written_ms - fetch_ms)", []).append(
                rec["written_ms"] - rec["fetch_ms"])
            for key, value in steps.items():
                per_pod.setdefault(key, []).append(value)
        for key, values in per_pod.items():
            out[key] = statistics.median(values)
            out[f"{key} (last pod)"] = max(values)
    if finished:
        out["round finished (acks in status)"] = finished[0]
    ms = {k: (v - edit.at) * 1000 for k, v in out.items()}
    if started:
        ms |= {f"per pod, median: {k}": statistics.median(v) for k, v in durations.items()}
    return ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=100, help="pods: sidecar + app pairs (default 100)")
    parser.add_argument("--edits", type=int, default=20, help="ConfigMap edits (default 20)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="edits before the measured ones, reported apart (default 1: the first "
                        "refresh of each sidecar finds the app process by scanning /proc)")
    parser.add_argument("--parallel", type=int, default=8, help="pods started at a time (default 8)")
    parser.add_argument("--debounce", type=float, help="operator auto-refresh debounce, s (default: shipped)")
    parser.add_argument("--fetch-jitter", type=float, help="sidecar fetch jitter, s (default: shipped)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, journals)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="refreshbus-bench-e2e-"))
    broker = Broker(work / "rabbitmq")
    plane = ControlPlane(work / "k8s")
    fleet: Fleet | None = None
    op: OperatorProc | None = None
    figures: dict[str, Any] = {"pods": args.pods, "edits": args.edits, "warmup": args.warmup}
    try:
        broker.start()
        plane.start()
        plane.apply_crds()
        plane.kubectl("create", "namespace", NS)
        plane.kubectl("-n", NS, "create", "serviceaccount", "default")
        configs.put_configmap(plane, NS, "app-config", config(0))
        labels = apply_deployment(plane, NS, WORKLOAD, replicas=args.pods)
        # The test fleet's default is a short jitter: the benchmark runs the shipped one.
        jitter = SHIPPED_JITTER if args.fetch_jitter is None else args.fetch_jitter
        figures["fetch_jitter_s"] = jitter
        fleet = Fleet(plane, broker, NS, work / "pods", sidecar_env={podc.ENV_FETCH_JITTER: str(jitter)})
        t0 = time.monotonic()
        members = fleet.node_pods([f"{WORKLOAD}-5d8f9c7b6-{i:04d}" for i in range(args.pods)], labels=labels,
                                  owner=Owner.replicaset_of(WORKLOAD), journal=True, parallel=args.parallel)
        figures["fleet_start_s"] = round(time.monotonic() - t0, 1)
        print(f"{args.pods} sidecars + apps running after {figures['fleet_start_s']} s", flush=True)
        figures["rss_after_start"] = rss_summary(members)

        env = {} if args.debounce is None else {
            "REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": str(args.debounce)}
        op = operator = OperatorProc(kubeconfig=plane.kubeconfig, namespaces=(NS,), workdir=work, env=env,
                                     broker_urls=[broker.url("refreshbus-operator")])
        operator.start()
        wait_for(lambda: operator.metrics().get("refreshbus_operator_watched_sources") == 1,
                 60, "the operator's ConfigMap watch")

        client_config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=plane.kubeconfig, client_configuration=client_config)
        core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(client_config))
        roles = {"sidecars": [m.sidecar.pid for m in members if m.sidecar is not None],
                 "apps": [m.app.pid for m in members if m.app is not None],
                 "kube-apiserver": [plane.pids["kube-apiserver"]], "etcd": [plane.pids["etcd"]],
                 "rabbitmq": tree(broker.pid or 0), "operator": [operator.proc.pid if operator.proc else 0]}
        window = OperatorConfig().auto_refresh_debounce if args.debounce is None else args.debounce
        gap = window + 0.5
        figures["edit_gap_s"] = gap
        edits: list[Edit] = []
        for version in range(1, args.warmup + args.edits + 1):
            if version == args.warmup + 1:
                cpu_before, wall_before = cpu_by_role(roles), time.monotonic()
            if edits:
                # Pace the edits: one made within the window the previous refresh opened is
                # gathered into a refresh at the window's end (by design), not measured here.
                time.sleep(max(0.0, edits[-1].at + gap - time.time()))
            at = time.time()
            core.patch_namespaced_config_map("app-config", NS, {"data": config(version)})
            loads = wait_loaded(members, lambda e, v=version: e["version"] == v, timeout=120)
            edits.append(Edit(version, at, loads))
            # Let the round finish (every ack in status) before the next edit: one at a time.
            wait_for(lambda v=version: sum(" finished: " in t for _, t in operator_lines(operator)) >= v,
                     120, f"round {version} to finish", interval=0.05)
            total = (max(e["at"] for e in loads.values()) - at) * 1000
            warm = " (warm-up: not counted)" if version <= args.warmup else ""
            print(f"edit {version:3d}: every app reloaded after {total:7.1f} ms{warm}", flush=True)
        cpu_after, wall = cpu_by_role(roles), time.monotonic() - wall_before
        figures["cpu_s_per_edit"] = {r: round((cpu_after[r] - cpu_before[r]) / args.edits, 3)
                                     for r in cpu_after}
        figures["cpu_s_per_edit"]["wall"] = round(wall / args.edits, 3)
        figures["rss_after_edits"] = rss_summary(members)

        for m in members:
            versions = [e["version"] for e in m.loads()]
            if versions != list(range(args.warmup + args.edits + 1)):
                print(f"WARNING: {m.name} loaded versions {versions}", flush=True)
        lines = operator_lines(operator)
        refreshes = {m.name: sidecar_refreshes(m) for m in members}
        figures["warmup_ms"] = [round((max(e["at"] for e in ed.loads.values()) - ed.at) * 1000, 1)
                                for ed in edits[:args.warmup]]
        edits = edits[args.warmup:]
        latencies = [(max(e["at"] for e in ed.loads.values()) - ed.at) * 1000 for ed in edits]
        figures["edit_to_all_reloaded_ms"] = {"p50": round(pct(latencies, 50), 1),
                                              "p99": round(pct(latencies, 99), 1),
                                              "max": round(max(latencies), 1),
                                              "all": [round(x, 1) for x in latencies]}
        per_stage: dict[str, list[float]] = {}
        for ed in edits:
            for key, ms in stages(ed, lines, refreshes).items():
                per_stage.setdefault(key, []).append(ms)
        figures["stages_ms"] = {k: {"p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1)}
                                for k, v in per_stage.items()}
    finally:
        if fleet is not None:
            fleet.stop()
        if op is not None:
            op.stop()
        plane.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    lat = figures["edit_to_all_reloaded_ms"]
    if figures["warmup_ms"]:
        print(f"\nwarm-up edit(s), not counted: {figures['warmup_ms']} ms")
    print(f"\nedit -> all {args.pods} apps reloaded, {args.edits} edits: p50 {lat['p50']} ms, "
          f"p99 {lat['p99']} ms, max {lat['max']} ms")
    print("\nwhere the time goes (ms after the edit; per-pod steps: median pod, then last pod):")
    for key, v in figures["stages_ms"].items():
        print(f"  {key:42s} p50 {v['p50']:8.1f}   p99 {v['p99']:8.1f}")
    cpu = figures["cpu_s_per_edit"]
    print("\nCPU seconds per edit (edit -> round finished, one edit at a time; the machine's other load "
          "not counted): " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
    for when in ("rss_after_start", "rss_after_edits"):
        r = figures[when]
        print(f"\nsidecar RSS {when[4:].replace('_', ' ')}: total {r['total_mib']} MiB, per sidecar mean "
              f"{r['mean_mib']} / max {r['max_mib']} / min {r['min_mib']} MiB")
    if args.keep:
        print(f"\nlogs and journals kept in {work}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
