"""Scale benchmark: the operator with 100, 1,000 and 5,000 target pods (``make bench-scale``).

Run with ``.venv/bin/python bench/scale_bench.py`` (``--json FILE`` writes the figures;
``--help`` for sizes, rounds, answer delay, failure rate). It starts its own RabbitMQ node
and kube-apiserver (tests/testenv) and the real ``refreshbus-operator`` process with
auto-refresh on; the pods are API objects created through one client, concurrently, in
Deployments of ``--pods-per-workload`` pods (5,000 pods = 50 workloads), and their
sidecars are SIMULATED (bench/sim/refreshbus_sim): one asyncio process, one AMQP
connection, exclusive queue and four bindings per pod, acks with each pod's real identity
token (a TokenRequest bound to the pod). So the figures are the operator's, the broker's
and the API server's part of a refresh, not the sidecar's (``make bench-e2e``). Not a
pass/fail test; docs/scale.md has the figures and how they were measured.

Per size (pods accumulate: 100, then 900 more, then 4,000 more):
* ``kubectl create`` of a ConfigRefresh targeting every pod (a label selector: one
  message per pod, since the targets span workloads) -> the watch event whose status
  shows every target acked. The first round after new pods appear is reported apart
  (``cold``: the operator verifies each new pod's token once, then caches it); p50/p99
  over the ``--rounds`` rounds after it;
* a ConfigMap edit with auto-refresh: every workload manages the ConfigMap ``shared``,
  so one edit makes one auto-created ConfigRefresh per workload, all at once (``--edits``
  times; debounce 0): edit -> every workload's ConfigRefresh has every ack in status,
  p50/p99, and the spread between the first and the last workload to finish;
* API requests per refresh from the API server's ``apiserver_request_total`` (minus the
  benchmark's own requests; watches are long-running and left out);
* the operator's RSS (VmRSS, peak VmHWM), the broker's memory (``rabbitmqctl status``)
  and the simulator's process RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT / "tests" / "testenv"),
    str(ROOT / "tests" / "support"),
    str(ROOT / "tests" / "integration" / "operator"),
    str(ROOT / "bench" / "sim"),
]

import kubernetes  # noqa: E402
from opharness import OperatorProc, configmap, deployment  # noqa: E402
from refreshbus_operator.kube import Kube, load_configuration  # noqa: E402
from refreshbus_sim.fleet import create_pods  # noqa: E402
from refreshbus_sim.loop import LoopThread  # noqa: E402
from refreshbus_sim.measure import api_requests, pct, rss_mib  # noqa: E402
from refreshbus_sim.sidecars import Behaviour, SimPod, Simulator  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402
from refreshbus_wire import routing  # noqa: E402

NS = "bench"
AUTO_FOR = "refreshbus.io/auto-refresh-for"


class Watcher:
    """Watches the namespace's ConfigRefreshes; notes when each first has every target
    acked (and, for auto-created ones, which workload it is for)."""

    def __init__(self, kubeconfig: str) -> None:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        self.api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))
        self.done: dict[str, tuple[float, str | None]] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        w = kubernetes.watch.Watch()
        while True:
            try:
                for event in w.stream(self.api.list_namespaced_custom_object, "refreshbus.io", "v1alpha1",
                                      NS, "configrefreshes", timeout_seconds=3600):
                    obj = event["object"]
                    counts = (obj.get("status") or {}).get("counts") or {}
                    if counts.get("targets") and counts.get("acked") == counts.get("targets"):
                        meta = obj["metadata"]
                        with self.cond:
                            self.done.setdefault(meta["name"], (time.monotonic(),
                                                                (meta.get("labels") or {}).get(AUTO_FOR)))
                            self.cond.notify_all()
            except Exception:
                time.sleep(0.2)

    def wait(self, name: str, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.done, timeout):
                raise TimeoutError(f"{name} never had every ack in its status")
            return self.done[name][0]

    def wait_auto(self, workloads: set[str], known: set[str], timeout: float) -> list[float]:
        """Times at which each workload's first auto ConfigRefresh not in ``known`` was done."""
        def finished() -> dict[str, float]:
            out: dict[str, float] = {}
            for name, (at, workload) in self.done.items():
                if name not in known and workload in workloads:
                    out.setdefault(workload, at)
            return out

        with self.cond:
            if not self.cond.wait_for(lambda: len(finished()) == len(workloads), timeout):
                missing = sorted(workloads - set(finished()))
                raise TimeoutError(f"no finished auto-refresh for {len(missing)} workload(s), "
                                   f"e.g. {missing[:3]}")
            return sorted(finished().values())


def broker_memory_mib(broker: Broker) -> float | None:
    """The node's total memory as RabbitMQ itself counts it (``rabbitmqctl status``)."""
    try:
        status = json.loads(broker.ctl("status", "--formatter", "json"))
        return round(float(status["memory"]["total"]["rss"]) / 2**20, 1)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError):
        return None


#: What the API server does for itself meanwhile (its identity lease, the ``kubernetes``
#: Service's endpoints): nobody's refresh.
HOUSEKEEPING = ("leases", "endpoints", "endpointslices", "services")


def per_refresh(delta: Counter[str], rounds: int, own: Counter[str]) -> dict[str, float]:
    """Requests by kind per refresh, without the benchmark's own, the API server's own and
    watches (long-running: counted when they end, not per refresh)."""
    out = {}
    for key, value in sorted((delta - own).items()):
        verb, resource = key.split(" ", 1)
        if value > 0 and verb != "WATCH" and resource.split("/")[0] not in HOUSEKEEPING:
            out[key] = round(value / rounds, 2)
    return out


def raise_fd_limit() -> int:
    """One connection per simulated pod: the soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000", help="numbers of targets (default 100,1000,5000)")
    parser.add_argument("--rounds", type=int, default=10, help="warm apply rounds per size (default 10)")
    parser.add_argument("--edits", type=int, default=5, help="ConfigMap edits per size (default 5)")
    parser.add_argument("--pods-per-workload", type=int, default=100,
                        help="pods per Deployment (default 100)")
    parser.add_argument("--delay", default="0", help="simulated answer delay in seconds, 'S' or 'MIN:MAX' "
                        "(uniform; default 0)")
    parser.add_argument("--failure-rate", type=float, default=0.0,
                        help="share of 'failed' answers (default 0)")
    parser.add_argument("--pods-per-connection", type=int, default=1,
                        help="simulated pods sharing one AMQP connection "
                        "(default 1: one each, as real sidecars)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the operator, e.g. REFRESHBUS_OPERATOR_ACK_PREFETCH=5000")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    low, _, high = args.delay.partition(":")
    behaviour = Behaviour(delay_min=float(low), delay_max=float(high or low), failure_rate=args.failure_rate)
    fd_limit = raise_fd_limit()
    if sizes[-1] // args.pods_per_connection + 1000 > fd_limit:
        parser.error(f"{sizes[-1]} pods need more than the file descriptor limit {fd_limit}: "
                     "raise it (ulimit -n) or use --pods-per-connection")

    work = Path(tempfile.mkdtemp(prefix="refreshbus-scale-bench-"))
    broker, plane = Broker(work / "rabbitmq"), ControlPlane(work / "k8s")
    loop = LoopThread()
    operator: OperatorProc | None = None
    kube: Kube | None = None
    sim = Simulator(broker.url("refreshbus-sidecar"), behaviour, args.pods_per_connection)
    results: dict[str, Any] = {"machine": {"cpus": len(os.sched_getaffinity(0))}, "sizes": {},
                               "settings": {**vars(args), "json": None}}
    try:
        print("starting RabbitMQ and kube-apiserver ...", flush=True)
        broker.start()
        plane.start()
        plane.apply_crds()
        plane.kubectl("create", "namespace", NS)
        plane.kubectl("-n", NS, "create", "serviceaccount", "default")
        configmap(plane, NS, "shared", {"k": "v0"})
        kube = Kube(load_configuration(plane.kubeconfig))
        operator = OperatorProc(
            kubeconfig=plane.kubeconfig,
            broker_urls=[broker.url("refreshbus-operator")],
            namespaces=(NS,),
            workdir=work,
            env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0",
                 **dict(item.split("=", 1) for item in args.operator_env)},
        )
        operator.start()
        assert operator.proc is not None
        watcher = Watcher(plane.kubeconfig)
        made = 0
        edits = 0
        template = {"refreshbus.io/inject": "true", "refreshbus.io/configmaps": "shared",
                    "refreshbus.io/auto-refresh": "true"}
        for size in sizes:
            # New pods fill the last workload, then new workloads.
            plan: list[tuple[str, int, int]] = []
            while made < size:
                index, offset = divmod(made, args.pods_per_workload)
                count = min(args.pods_per_workload - offset, size - made)
                plan.append((f"wl-{index:02d}", offset, count))
                made += count
            t0 = time.monotonic()
            for name, offset, _count in plan:
                if offset == 0:
                    deployment(plane, NS, name, {"app": name}, template)
            pods = []
            for name, offset, count in plan:
                pods += loop.run(create_pods(kube, NS, [(name, count)], labels={"tier": "bench"},
                                             configmaps=lambda _d: ("shared",), start=offset), timeout=1800)
            created_s = time.monotonic() - t0
            t1 = time.monotonic()
            loop.run(sim.add([SimPod(routing.PodIdentity(NS, p.name, p.workload_kind, p.workload_name), token)
                              for p, token in pods]), timeout=1800)
            connected_s = time.monotonic() - t1
            print(f"{size:>5} pods: {len(pods)} new pod objects (Running, token) in {created_s:.1f} s; "
                  f"their simulated sidecars connected in {connected_s:.1f} s", flush=True)
            workloads = {name for name, _offset, _count in plan} | {
                f"wl-{i:02d}" for i in range(size // args.pods_per_workload)}

            def apply(name: str) -> float:
                manifest = {"apiVersion": "refreshbus.io/v1alpha1", "kind": "ConfigRefresh",
                            "metadata": {"name": name, "namespace": NS},
                            "spec": {"sources": [{"configMap": {"name": "shared"}}],
                                     "target": {"selector": {"matchLabels": {"tier": "bench"}}},
                                     "deadlineSeconds": 300}}
                start = time.monotonic()
                plane.kubectl("create", "-f", "-", input=json.dumps(manifest))
                return (watcher.wait(name, 600) - start) * 1000

            cold_ms = apply(f"r{size}-cold")
            time.sleep(1.0)  # the cold round's final status PATCH and Event land before counting
            before = api_requests(plane)
            latencies = [apply(f"r{size}-{r}") for r in range(args.rounds)]
            time.sleep(1.0)
            spent = api_requests(plane) - before
            apply_cost = per_refresh(spent, args.rounds, Counter({"POST configrefreshes": args.rounds}))
            edit_ms, spread_ms = [], []
            before = api_requests(plane)
            for _ in range(args.edits):
                edits += 1
                with watcher.cond:
                    known = set(watcher.done)
                start = time.monotonic()
                plane.kubectl("-n", NS, "patch", "configmap", "shared", "--type=merge",
                              "-p", json.dumps({"data": {"k": f"v{edits}"}}))
                finished = watcher.wait_auto(workloads, known, 600)
                edit_ms.append((finished[-1] - start) * 1000)
                spread_ms.append((finished[-1] - finished[0]) * 1000)
                time.sleep(0.5)  # let the last auto ConfigRefresh finish before the next edit
            time.sleep(1.0)
            spent = api_requests(plane) - before
            edit_cost = per_refresh(spent, args.edits * len(workloads),
                                    Counter({"PATCH configmaps": args.edits}))
            figures = {
                "workloads": len(workloads),
                "pods_created_s": round(created_s, 1),
                "sidecars_connected_s": round(connected_s, 1),
                "apply_cold_ms": round(cold_ms),
                "apply_p50_ms": round(pct(latencies, 50)),
                "apply_p99_ms": round(pct(latencies, 99)),
                "apply_max_ms": round(max(latencies)),
                "apply_api_requests_per_refresh": round(sum(apply_cost.values()), 2),
                "apply_api_requests_by_kind": apply_cost,
                "edit_p50_ms": round(pct(edit_ms, 50)),
                "edit_p99_ms": round(pct(edit_ms, 99)),
                "edit_spread_p50_ms": round(pct(spread_ms, 50)),
                "edit_api_requests_per_workload_refresh": round(sum(edit_cost.values()), 2),
                "edit_api_requests_by_kind": edit_cost,
                "operator_rss_mib": rss_mib(operator.proc.pid),
                "broker_memory_mib": broker_memory_mib(broker),
                "simulator_rss_mib": rss_mib(os.getpid())["VmRSS"],
                "simulator_errors": sim.errors,
            }
            results["sizes"][str(size)] = figures
            print(
                f"{size:>5} targets: apply -> all acks in status: cold {figures['apply_cold_ms']} ms, then "
                f"p50 {figures['apply_p50_ms']} ms, p99 {figures['apply_p99_ms']} ms; "
                f"{figures['apply_api_requests_per_refresh']} API requests per refresh {apply_cost}",
                flush=True,
            )
            print(
                f"{'':>5}   ConfigMap edit -> {len(workloads)} auto refreshes, every ack in status: "
                f"p50 {figures['edit_p50_ms']} ms, p99 {figures['edit_p99_ms']} ms (first to last workload "
                f"p50 {figures['edit_spread_p50_ms']} ms); "
                f"{figures['edit_api_requests_per_workload_refresh']} API requests per workload refresh",
                flush=True,
            )
            print(
                f"{'':>5}   operator RSS {figures['operator_rss_mib']['VmRSS']} MiB "
                f"(peak {figures['operator_rss_mib']['VmHWM']}); broker {figures['broker_memory_mib']} MiB; "
                f"simulator {figures['simulator_rss_mib']} MiB; simulator errors {sim.errors}",
                flush=True,
            )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        loop.run(sim.close(), timeout=120)
        if kube is not None:
            loop.run(kube.aclose())
        if operator is not None:
            operator.stop()
        loop.stop()
        plane.destroy()
        broker.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
