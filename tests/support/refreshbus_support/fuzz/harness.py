"""Bad messages through the real broker to a real sidecar and the real operator, while
real refreshes go on, and the proof that nothing was lost, crashed or leaked.

:func:`run` sets up one pod of Deployment ``web`` (an API object) with a real
``refreshbus-sidecar`` process and the Node.js app it reloads, a second target pod that
never answers, and a real ``refreshbus-operator``; a ConfigRefresh for both pods stays in
flight all along (the *anchor*: acks for it are ``duplicate`` or ``not_target``, and it
keeps the operator consuming acks). Then one thread publishes the generated messages on
one connection, without confirms, to the sidecar's routing keys and to ack keys, never
more than :data:`WINDOW` ahead of what each process has counted; another edits the
ConfigMap and applies a ConfigRefresh for it, again and again, and checks that each one
succeeds and that the app serves the new content.

At the end every counter a category names must have grown by exactly the number of
messages sent in it, both processes must still run (the sidecar never reconnected), and
their RSS must not have grown by more than the stated bound.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from opharness import OperatorProc, cfr, refresh, wait_for, wait_phase
from refreshbus_testenv.procs import free_port
from refreshbus_wire import pods as podc
from refreshbus_wire import routing

from refreshbus_support import apps, configs
from refreshbus_support.fuzz.messages import (
    CATEGORIES,
    Generator,
    Live,
    To,
)
from refreshbus_support.pods import Owner, ack_token, create_pod
from refreshbus_support.sidecars import Sidecar, start_sidecar

#: Most messages published to one process and not yet counted by it.
WINDOW = 4000
#: Operator: how long an ack for an unknown event is kept before it is dropped (s).
UNKNOWN_ACK_GRACE = 3.0
#: The RSS bound: growth from the first sample (after setup and one real refresh) to the
#: end, per process. Python allocates in arenas, so small steps happen; a per-message
#: leak of even 16 bytes would show 16 MB over a million messages.
RSS_BOUND_KIB = {"sidecar": 12 * 1024, "operator": 24 * 1024}

WORKLOAD = "web"
POD = "web-5d8f9c7b6-0"
SILENT_POD = "web-5d8f9c7b6-silent"
#: A pod no round targets (acks from it, with its own token, are not_target).
OTHER_POD = "other-0"
CONFIGMAP = "app-config"
ANCHOR = "fuzz-anchor"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Report:
    seed: int
    messages: int
    sent: Counter[str] = field(default_factory=Counter)
    #: counter series -> (expected growth, actual growth)
    counted: dict[str, tuple[int, int]] = field(default_factory=dict)
    rss: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: {"sidecar": [], "operator": []})
    publish_seconds: float = 0.0
    drain_seconds: float = 0.0
    refreshes: int = 0
    refreshes_ok: int = 0
    refresh_seconds: list[float] = field(default_factory=list)
    sidecar_reconnects: int = 0
    #: Kubernetes API requests the operator made during the run (real refreshes included).
    api_requests: int = 0
    #: CPU seconds each process used while the messages flowed.
    cpu: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.messages / max(self.publish_seconds + self.drain_seconds, 1e-9)

    def rss_growth(self, process: str) -> int:
        samples = self.rss[process]
        return samples[-1][1] - samples[0][1] if samples else 0

    def check(self) -> None:
        """Fill :attr:`violations` (empty = the run passed)."""
        v = self.violations
        for name, (want, got) in sorted(self.counted.items()):
            if want != got:
                v.append(f"{name}: {got} counted, {want} expected")
        if self.sidecar_reconnects:
            v.append(f"the sidecar reconnected {self.sidecar_reconnects} time(s) (messages may be lost)")
        if self.refreshes_ok != self.refreshes or not self.refreshes:
            v.append(f"{self.refreshes - self.refreshes_ok} of {self.refreshes} real refreshes failed")
        for process, bound in RSS_BOUND_KIB.items():
            if self.rss_growth(process) > bound:
                v.append(f"{process} RSS grew by {self.rss_growth(process)} KiB (bound {bound} KiB)")

    def table(self) -> str:
        lines = [f"refreshbus fuzz: {self.messages:,} messages, seed {self.seed}", ""]
        lines.append(f"{'category':<24} {'to':<9} {'sent':>10}  counted as")
        for c in CATEGORIES:
            lines.append(f"{c.name:<24} {c.to.value:<9} {self.sent[c.name]:>10,}  {', '.join(c.counts)}")
        lines += ["", f"{'counter (growth during the run)':<62} {'expected':>10} {'counted':>10}"]
        for name, (want, got) in sorted(self.counted.items()):
            lines.append(f"{name:<62} {want:>10,} {got:>10,}{'' if want == got else '  <-- MISMATCH'}")
        lines.append("")
        for process, samples in self.rss.items():
            shown = " -> ".join(f"{kib / 1024:.1f}" for _, kib in samples)
            lines.append(f"RSS {process:<9} MiB at 0/50/100 %: {shown}  "
                         f"(growth {self.rss_growth(process) / 1024:+.1f} MiB, bound "
                         f"{RSS_BOUND_KIB[process] / 1024:.0f} MiB)")
        p50 = sorted(self.refresh_seconds)[len(self.refresh_seconds) // 2] if self.refresh_seconds else 0.0
        worst = max(self.refresh_seconds, default=0.0)
        lines += [
            f"throughput: {self.throughput:,.0f} messages/s end to end "
            f"(published in {self.publish_seconds:.1f} s, all counted {self.drain_seconds:.1f} s later)",
            f"real refreshes: {self.refreshes_ok} of {self.refreshes} succeeded "
            f"(apply -> Succeeded p50 {p50:.2f} s, max {worst:.2f} s)",
            "CPU used: " + ", ".join(f"{p} {sec:.1f} s ({sec / max(self.messages, 1) * 1e6:.0f} us/message)"
                                     for p, sec in self.cpu.items()),
            f"operator API requests: {self.api_requests:,} "
            f"({self.api_requests / max(self.refreshes, 1):.1f} per real refresh)",
            f"sidecar reconnects: {self.sidecar_reconnects}",
            f"violations: {len(self.violations)}",
            *(f"  - {x}" for x in self.violations),
            f"seed: {self.seed} (reproduce: --messages {self.messages} --seed {self.seed})",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "messages": self.messages, "sent": dict(self.sent),
            "counted": {k: {"expected": w, "counted": g} for k, (w, g) in self.counted.items()},
            "rss_kib": self.rss, "publish_seconds": self.publish_seconds,
            "drain_seconds": self.drain_seconds, "throughput": self.throughput,
            "refreshes": self.refreshes, "refreshes_ok": self.refreshes_ok,
            "refresh_seconds": self.refresh_seconds, "cpu_seconds": self.cpu,
            "api_requests": self.api_requests,
            "violations": self.violations,
        }


class _Refresher(threading.Thread):
    """Real refreshes, one after the other, until stopped: ConfigMap edit, ConfigRefresh
    apply, wait for Succeeded, check the app serves the new content."""

    def __init__(self, cluster: Any, namespace: str, app: apps.App, live: Live, report: Report,
                 operator: OperatorProc) -> None:
        super().__init__(name="fuzz-refresher", daemon=True)
        self.cluster, self.namespace, self.app, self.live = cluster, namespace, app, live
        self.report, self.operator = report, operator
        self.stop = threading.Event()
        self.n = 0
        self._pending_id: str | None = None
        self.error: BaseException | None = None

    def one(self) -> None:
        self.n += 1
        n, ns = self.n, self.namespace
        self.report.refreshes += 1
        started = time.monotonic()
        configs.put_configmap(self.cluster, ns, CONFIGMAP, {"config.json": json.dumps({"version": n})})
        name = f"fuzz-real-{n}"
        refresh(self.cluster, ns, name, {"sources": [{"configMap": {"name": CONFIGMAP}}],
                                         "target": {"pods": [POD]}, "deadlineSeconds": 120})
        try:
            obj = wait_phase(self.cluster, ns, name, ("Succeeded", "PartiallyFailed", "Failed", "TimedOut"),
                             timeout=150, operator=self.operator)
        except AssertionError as exc:
            self.report.violations.append(f"real refresh {name}: {exc}"[:2000])
            return
        phase = obj["status"]["phase"]
        config = apps.node_config(self.app)
        if phase != "Succeeded" or config != {"version": n}:
            self.report.violations.append(f"real refresh {name}: {phase}, the app serves {config}")
            return
        self.report.refreshes_ok += 1
        self.report.refresh_seconds.append(time.monotonic() - started)
        # Offered to the generator one round late: by then the round is surely unregistered
        # in the operator, so acks for it are "late", never "duplicate".
        if self._pending_id is not None:
            self.live.finished.append(self._pending_id)
        self._pending_id = obj["status"]["eventId"]

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.one()
                self.stop.wait(0.2)
        except BaseException as exc:  # reported by the main thread
            self.error = exc


class _Publisher:
    """One connection, one channel, no confirms: the fastest way pika puts bytes on the bus."""

    def __init__(self, url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.conn.channel()
        self.props = pika.BasicProperties(content_type="application/json")

    def publish(self, key: str, body: bytes) -> None:
        self.channel.basic_publish(routing.EXCHANGE, key, body, self.props)

    def flush(self) -> None:
        """Let pika write what it buffered and read what the broker said (blocked, closed)."""
        self.conn.process_data_events(time_limit=0)

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def _scrape(fetch: Callable[[], dict[str, float]]) -> dict[str, float]:
    for _ in range(20):
        try:
            return fetch()
        except (OSError, urllib.error.URLError, AssertionError):
            time.sleep(0.25)
    return fetch()


def run(
    *,
    broker: Any,
    cluster: Any,
    namespace: str,
    workdir: Path,
    messages: int,
    seed: int,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Run the fuzz against processes started here (stopped before returning)."""
    report = Report(seed=seed, messages=messages)
    live = Live(namespace=namespace, pod=POD, workload=("Deployment", WORKLOAD), configmap=CONFIGMAP,
                silent_pod=SILENT_POD, other_pod=OTHER_POD)
    configs.put_configmap(cluster, namespace, CONFIGMAP, {"config.json": json.dumps({"version": 0})})
    shared = workdir / "shared"
    config_file = shared / f"configmap-{CONFIGMAP}" / "config.json"
    port = free_port()
    pattern = rf"config-server\.js {port} {re.escape(str(config_file))}$"
    pod = create_pod(cluster, namespace, POD, labels={"app": WORKLOAD}, owner=Owner.replicaset_of(WORKLOAD),
                     configmaps=[CONFIGMAP], action={podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP",
                                                     podc.ENV_PROCESS: pattern})
    create_pod(cluster, namespace, SILENT_POD, labels={"app": WORKLOAD}, owner=Owner.replicaset_of(WORKLOAD),
               configmaps=[CONFIGMAP])
    other = create_pod(cluster, namespace, OTHER_POD, labels={"app": "other"}, configmaps=[CONFIGMAP])
    # Real pod-bound tokens, as the kubelet projects them, that outlive the longest run.
    live.tokens = {p.name: ack_token(cluster, namespace, p.name, p.uid, duration="12h") for p in (pod, other)}
    sidecar: Sidecar | None = None
    app: apps.App | None = None
    operator = OperatorProc(kubeconfig=cluster.kubeconfig, broker_urls=[broker.url("refreshbus-operator")],
                            namespaces=(namespace,), workdir=workdir, name="operator",
                            env={"REFRESHBUS_OPERATOR_UNKNOWN_ACK_GRACE": str(UNKNOWN_ACK_GRACE)})
    refresher: _Refresher | None = None
    publisher: _Publisher | None = None
    try:
        sidecar = start_sidecar(pod, broker_urls=[broker.url("refreshbus-sidecar")],
                                kubeconfig=cluster.kubeconfig, target_dir=shared, workdir=workdir / "sidecar",
                                env={podc.ENV_FETCH_JITTER: "0.02"},
                                ack_token=live.tokens[POD])
        app = apps.start_node_app(workdir / "app", config_file, port=port)
        operator.start()
        progress("sidecar, app and operator up; first real refresh and the anchor round ...")
        refresher = _Refresher(cluster, namespace, app, live, report, operator)
        refresher.one()
        refresher.one()  # now live.finished has one finished round
        refresh(cluster, namespace, ANCHOR, {"sources": [{"configMap": {"name": CONFIGMAP}}],
                                             "target": {"pods": [POD, SILENT_POD]}, "deadlineSeconds": 3600})
        anchor = wait_for(lambda: (s := cfr(cluster, namespace, ANCHOR).get("status", {})).get("counts", {})
                          .get("acked") == 1 and s, 60, "the anchor round's first ack")
        live.anchor_event = anchor["eventId"]

        before = {"sidecar": _scrape(sidecar.metrics), "operator": _scrape(operator.metrics)}
        pids = {"sidecar": sidecar.pid, "operator": operator.proc.pid if operator.proc else 0}
        for process, pid in pids.items():
            report.rss[process].append((0, rss_kib(pid)))
            report.cpu[process] = -cpu_seconds(pid)

        expected: Counter[str] = Counter()
        sent_to: Counter[To] = Counter()
        refresher.start()
        publisher = _Publisher(broker.url())
        started = time.monotonic()

        def behind(to: To) -> float:
            """Messages sent to a process that it has not counted yet (roughly: the operator
            also counts the real acks and the sidecar's answers)."""
            if to is To.SIDECAR:
                name = "refreshbus_sidecar_events_received_total"
                return sent_to[to] - (_scrape(sidecar.metrics).get(name, 0) - before["sidecar"].get(name, 0))
            now = _scrape(operator.metrics)
            return sent_to[to] - sum(v - before["operator"].get(k, 0) for k, v in now.items()
                                     if k.startswith("refreshbus_operator_acks_total{"))

        def dead() -> str | None:
            if sidecar.proc.poll() is not None:
                return f"the sidecar exited with {sidecar.proc.returncode}"
            return None if operator.alive else "the operator process died"

        for i, message in enumerate(Generator(seed, live).messages(messages), 1):
            publisher.publish(message.routing_key, message.body)
            category = message.category
            report.sent[category.name] += 1
            sent_to[category.to] += 1
            expected.update(category.counts)
            if i % 500:
                continue
            publisher.flush()
            for to in (To.SIDECAR, To.OPERATOR):
                while behind(to) > WINDOW and not dead():
                    publisher.flush()
                    time.sleep(0.02)
            if (why := dead()) is not None:
                report.violations.append(f"{why} after {i:,} messages")
                break
            if i == messages // 2:
                for process, pid in pids.items():
                    report.rss[process].append((i, rss_kib(pid)))
            if i % 50_000 == 0:
                rate = i / (time.monotonic() - started)
                progress(f"{i:,} published ({rate:,.0f}/s), {report.refreshes_ok} real refreshes ok")
            if refresher.error is not None:
                raise refresher.error
        publisher.flush()
        report.publish_seconds = time.monotonic() - started
        drained = time.monotonic()

        def deltas() -> dict[str, int]:
            now = {"sidecar": _scrape(sidecar.metrics), "operator": _scrape(operator.metrics)}
            out = {}
            for name in expected:
                process = "sidecar" if name.startswith("refreshbus_sidecar") else "operator"
                out[name] = int(now[process].get(name, 0) - before[process].get(name, 0))
            return out

        try:
            wait_for(lambda: dead() or all(deltas()[k] >= v for k, v in expected.items()),
                     120 + UNKNOWN_ACK_GRACE, "every message to be counted", interval=0.5)
        except AssertionError as exc:
            report.violations.append(str(exc)[:2000])
        report.drain_seconds = time.monotonic() - drained
        refresher.stop.set()
        refresher.join(180)
        # Anything counted twice shows up once the last parked acks had their grace.
        time.sleep(UNKNOWN_ACK_GRACE + 1.5)
        final = deltas()
        report.counted = {k: (v, final[k]) for k, v in expected.items()}
        if dead() is None:
            for process, pid in pids.items():
                report.rss[process].append((messages, rss_kib(pid)))
                report.cpu[process] += cpu_seconds(pid)
        after = _scrape(sidecar.metrics)
        op_after = _scrape(operator.metrics)
        report.api_requests = int(sum(v - before["operator"].get(k, 0) for k, v in op_after.items()
                                      if k.startswith("refreshbus_operator_api_requests_total{")))
        report.sidecar_reconnects = int(after.get("refreshbus_sidecar_reconnects_total", 0)
                                        - before["sidecar"].get("refreshbus_sidecar_reconnects_total", 0))
        for process, alive in (("sidecar", sidecar.proc.poll() is None), ("operator", operator.alive)):
            if not alive:
                report.violations.append(f"the {process} process died")
        if refresher.error is not None:
            report.violations.append(f"real refreshes stopped: {refresher.error!r}")
        # Forged acks spoke for the silent pod all along: none may have become its result.
        anchor = cfr(cluster, namespace, ANCHOR).get("status", {})
        answered = sorted(r.get("pod", "") for r in anchor.get("results") or ())
        if anchor.get("phase") != "InProgress" or answered != [POD]:
            report.violations.append(f"anchor round: {anchor.get('phase')}, results from {answered}")
        report.check()
        return report
    finally:
        if refresher is not None:
            refresher.stop.set()
        if publisher is not None:
            publisher.close()
        operator.stop()
        if sidecar is not None:
            sidecar.stop()
        if app is not None:
            app.stop()
