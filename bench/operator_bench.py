"""Operator benchmark: ``kubectl create`` of a ConfigRefresh -> every ack in its status.

Run with ``.venv/bin/python bench/operator_bench.py`` (``--json FILE`` writes the figures).
It starts its own RabbitMQ node and kube-apiserver (tests/testenv), the real
``refreshbus-operator`` process, N pod objects (Running, opted in) and N *fake* sidecars:
threads that speak the real protocol on the real broker and ack at once. So the figure is
the operator's part of a refresh -- API server, resolution, publish with confirms, broker
routing, ack consumption, status PATCHes -- without the sidecars' own fetch/write/reload
(see the sidecar benchmark for that part). Not a pass/fail test.

Measured, for 1, 10 and 100 targets:
* latency from just before ``kubectl create`` to the watch event whose status shows every
  target acked (p50/p99 over ``--rounds`` refreshes); ``kubectl`` itself is timed apart;
* the operator's RSS (VmRSS, and the peak VmHWM) after the runs;
* API requests per refresh, from the API server's own ``apiserver_request_total``, by verb
  and resource (everything the operator and kopf did, minus the benchmark's own create).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT / "tests" / "testenv"),
    str(ROOT / "tests" / "support"),
    str(ROOT / "sidecar"),
    str(ROOT / "tests" / "integration" / "operator"),
    str(ROOT / "bench" / "sim"),
]

import kubernetes  # noqa: E402
from opharness import FakeSidecar, OperatorProc, configmap  # noqa: E402
from refreshbus_sim.measure import api_requests, pct  # noqa: E402
from refreshbus_sim.measure import rss_mib as rss  # noqa: E402
from refreshbus_support.pods import Owner, ack_token, create_pod  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402


class Watcher:
    """Watches ConfigRefreshes in one namespace; records when each has every target acked."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        self.api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))
        self.namespace = namespace
        self.done: dict[str, float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        w = kubernetes.watch.Watch()
        while True:
            try:
                for event in w.stream(
                    self.api.list_namespaced_custom_object,
                    "refreshbus.io",
                    "v1alpha1",
                    self.namespace,
                    "configrefreshes",
                    timeout_seconds=300,
                ):
                    obj = event["object"]
                    counts = (obj.get("status") or {}).get("counts") or {}
                    if counts.get("targets") and counts.get("acked") == counts.get("targets"):
                        with self.cond:
                            self.done.setdefault(obj["metadata"]["name"], time.monotonic())
                            self.cond.notify_all()
            except Exception:
                time.sleep(0.2)

    def wait(self, name: str, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.done, timeout):
                raise TimeoutError(f"{name} never had every ack in its status")
            return self.done[name]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,10,100", help="numbers of targets (default 1,10,100)")
    parser.add_argument("--rounds", type=int, default=20, help="refreshes per size (default 20)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="refreshbus-operator-bench-"))
    broker, plane = Broker(work / "rabbitmq"), ControlPlane(work / "k8s")
    fakes: list[FakeSidecar] = []
    operator: OperatorProc | None = None
    results: dict[str, Any] = {"sizes": {}}
    try:
        print("starting RabbitMQ and kube-apiserver ...", flush=True)
        broker.start()
        plane.start()
        plane.apply_crds()
        ns = "bench"
        plane.kubectl("create", "namespace", ns)
        plane.kubectl("-n", ns, "create", "serviceaccount", "default")
        configmap(plane, ns, "app-config", {"k": "v"})
        operator = OperatorProc(
            kubeconfig=plane.kubeconfig,
            broker_urls=[broker.url("refreshbus-operator")],
            namespaces=(ns,),
            workdir=work,
            env={"REFRESHBUS_OPERATOR_AUTO_REFRESH": "false"},
        )
        operator.start()
        assert operator.proc is not None
        watcher = Watcher(plane.kubeconfig, ns)
        made = 0
        for size in sizes:
            while made < size:
                pod = create_pod(
                    plane,
                    ns,
                    f"orders-5d8f9c7b6-{made:04d}",
                    labels={"app": "orders"},
                    owner=Owner.replicaset_of("orders"),
                    configmaps=("app-config",),
                )
                fakes.append(
                    FakeSidecar(broker.url("refreshbus-sidecar"), ns, pod.name, ("Deployment", "orders"),
                                token=ack_token(plane, ns, pod.name, pod.uid))
                )
                made += 1
            names = [f"orders-5d8f9c7b6-{i:04d}" for i in range(size)]
            before = api_requests(plane)
            latencies, kubectl_ms = [], []
            for r in range(args.rounds):
                name = f"r{size}-{r}"
                manifest = {
                    "apiVersion": "refreshbus.io/v1alpha1",
                    "kind": "ConfigRefresh",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"sources": [{"configMap": {"name": "app-config"}}], "target": {"pods": names}},
                }
                t0 = time.monotonic()
                plane.kubectl("create", "-f", "-", input=json.dumps(manifest))
                kubectl_ms.append((time.monotonic() - t0) * 1000)
                latencies.append((watcher.wait(name) - t0) * 1000)
            # let the final status PATCH and Events land before counting
            time.sleep(1.0)
            after = api_requests(plane)
            delta = after - before
            delta["POST configrefreshes"] -= args.rounds  # the benchmark's own creates
            per_refresh = {k: round(v / args.rounds, 2) for k, v in sorted(delta.items()) if v > 0}
            figures = {
                "p50_ms": round(pct(latencies, 50), 1),
                "p99_ms": round(pct(latencies, 99), 1),
                "max_ms": round(max(latencies), 1),
                "mean_ms": round(statistics.mean(latencies), 1),
                "kubectl_create_p50_ms": round(pct(kubectl_ms, 50), 1),
                "api_requests_per_refresh": round(sum(v for v in delta.values() if v > 0) / args.rounds, 2),
                "api_requests_by_kind": per_refresh,
            }
            results["sizes"][str(size)] = figures
            print(
                f"{size:>4} targets: apply -> all acks in status p50 {figures['p50_ms']} ms, "
                f"p99 {figures['p99_ms']} ms "
                f"(kubectl create itself p50 {figures['kubectl_create_p50_ms']} ms); "
                f"{figures['api_requests_per_refresh']} API requests per refresh",
                flush=True,
            )
            print(f"      by kind: {per_refresh}", flush=True)
        results["operator_rss_mib"] = rss(operator.proc.pid)
        m = operator.metrics()
        results["status_patches"] = m.get("refreshbus_operator_status_patches_total")
        results["refreshes"] = sum(
            v for k, v in m.items() if k.startswith("refreshbus_operator_refreshes_total")
        )
        print(
            f"operator RSS: {results['operator_rss_mib']['VmRSS']} MiB (peak "
            f"{results['operator_rss_mib']['VmHWM']} MiB) after {int(results['refreshes'])} refreshes; "
            f"{int(results['status_patches'] or 0)} status PATCHes in all"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        for fake in fakes:
            fake.stop()
        if operator is not None:
            operator.stop()
        plane.destroy()
        broker.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
