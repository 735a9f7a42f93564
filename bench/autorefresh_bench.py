"""Auto-refresh watch scope benchmark: one watch per namespace vs one per ConfigMap.

Run with ``.venv/bin/python bench/autorefresh_bench.py`` (``--json FILE`` writes the figures).
It starts its own RabbitMQ node and kube-apiserver (tests/testenv) and, for each scope,
the real ``refreshbus-operator`` process watching ``--configmaps`` ConfigMaps (in one
namespace, named by ``--workloads`` opted-in Deployments) plus ``--unrelated`` ConfigMaps
nobody names. Not a pass/fail test.

Measured per scope:
* watch connections, as the API server counts them (``apiserver_longrunning_requests``);
* time from the operator's start to every watch being open;
* the operator's RSS (VmRSS, peak VmHWM) once the watches run, and after the edits;
* edit -> ConfigRefresh created: from just before ``kubectl patch`` of a random watched
  ConfigMap to the creation of its auto ConfigRefresh (debounce 0; p50/p99 over ``--edits``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
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
    str(ROOT / "tests" / "integration" / "operator"),
    str(ROOT / "bench"),
]

import kubernetes  # noqa: E402
from operator_bench import pct, rss  # noqa: E402
from opharness import OperatorProc  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402

WATCHES = re.compile(r"^apiserver_longrunning_requests\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def configmap_watches(plane: ControlPlane) -> int:
    total = 0.0
    for line in plane.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        m = WATCHES.match(line)
        if m and 'resource="configmaps"' in m["labels"] and 'verb="WATCH"' in m["labels"]:
            total += float(m["value"])
    return int(total)


class Created:
    """Watches ConfigRefreshes in one namespace; records when each workload got a new one."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        self.api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))
        self.namespace = namespace
        self.seen: dict[str, list[float]] = {}
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
                    if event["type"] != "ADDED":
                        continue
                    workload = (
                        event["object"]["metadata"].get("labels", {}).get("refreshbus.io/auto-refresh-for")
                    )
                    with self.cond:
                        self.seen.setdefault(workload, []).append(time.monotonic())
                        self.cond.notify_all()
            except Exception:
                time.sleep(0.2)

    def wait(self, workload: str, count: int, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.seen.get(workload, [])) >= count, timeout):
                raise TimeoutError(f"no ConfigRefresh for {workload}")
            return self.seen[workload][count - 1]


def apply_list(plane: ControlPlane, items: list[dict[str, Any]]) -> None:
    plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def run_scope(
    plane: ControlPlane, broker: Broker, work: Path, scope: str, args: argparse.Namespace
) -> dict[str, Any]:
    ns = f"bench-{scope}"
    plane.kubectl("create", "namespace", ns)
    names = [f"cm-{i:04d}" for i in range(args.configmaps)]
    apply_list(
        plane,
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": n, "namespace": ns},
                "data": {"k": "v0"},
            }
            for n in names + [f"unrelated-{i:04d}" for i in range(args.unrelated)]
        ],
    )
    per = len(names) // args.workloads
    owner: dict[str, str] = {}
    workloads = []
    for w in range(args.workloads):
        mine = names[w * per : (w + 1) * per] if w < args.workloads - 1 else names[w * per :]
        owner.update({n: f"app-{w}" for n in mine})
        labels = {"app": f"app-{w}"}
        workloads.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"app-{w}", "namespace": ns},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {
                            "labels": labels,
                            "annotations": {
                                "refreshbus.io/auto-refresh": "true",
                                "refreshbus.io/configmaps": ",".join(mine),
                            },
                        },
                        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:test"}]},
                    },
                },
            }
        )
    apply_list(plane, workloads)
    created = Created(plane.kubeconfig, ns)
    base = configmap_watches(plane)  # the API server's own
    operator = OperatorProc(
        kubeconfig=plane.kubeconfig,
        broker_urls=[broker.url("refreshbus-operator")],
        namespaces=(ns,),
        workdir=work,
        name=f"operator-{scope}",
        env={
            "REFRESHBUS_OPERATOR_AUTO_REFRESH_WATCH_SCOPE": scope,
            "REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0",
        },
    )
    t0 = time.monotonic()
    operator.start()
    assert operator.proc is not None
    try:
        deadline = time.monotonic() + 120
        while operator.metrics().get("refreshbus_operator_watched_sources") != len(names):
            if time.monotonic() > deadline:
                raise TimeoutError("the watches did not start")
            time.sleep(0.1)
        expected = 1 if scope == "namespace" else len(names)
        while configmap_watches(plane) - base < expected:
            if time.monotonic() > deadline:
                raise TimeoutError("the watch connections did not open")
            time.sleep(0.1)
        ready_s = time.monotonic() - t0
        time.sleep(2.0)  # every initial listing answered
        connections = configmap_watches(plane) - base
        idle = rss(operator.proc.pid)
        rng = random.Random(args.seed)
        latencies = []
        counts: dict[str, int] = {}
        for i in range(args.edits):
            name = rng.choice(names)
            workload = owner[name]
            counts[workload] = counts.get(workload, 0) + 1
            start = time.monotonic()
            plane.kubectl(
                "-n",
                ns,
                "patch",
                "configmap",
                name,
                "--type=merge",
                "-p",
                json.dumps({"data": {"k": f"v{i + 1}"}}),
            )
            latencies.append((created.wait(workload, counts[workload]) - start) * 1000)
        figures = {
            "watch_connections": connections,
            "watches_ready_s": round(ready_s, 2),
            "rss_mib_watching": idle,
            "rss_mib_after_edits": rss(operator.proc.pid),
            "edit_to_refresh_p50_ms": round(pct(latencies, 50), 1),
            "edit_to_refresh_p99_ms": round(pct(latencies, 99), 1),
            "edit_to_refresh_max_ms": round(max(latencies), 1),
        }
    finally:
        operator.stop()
    print(
        f"{scope:>9}: {figures['watch_connections']} watch connections, "
        f"ready in {figures['watches_ready_s']} s, RSS {figures['rss_mib_watching']['VmRSS']} MiB "
        f"(after edits {figures['rss_mib_after_edits']['VmRSS']} MiB, "
        f"peak {figures['rss_mib_after_edits']['VmHWM']} MiB); edit -> ConfigRefresh p50 "
        f"{figures['edit_to_refresh_p50_ms']} ms, p99 {figures['edit_to_refresh_p99_ms']} ms",
        flush=True,
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configmaps", type=int, default=200, help="watched ConfigMaps (default 200)")
    parser.add_argument(
        "--workloads", type=int, default=20, help="opted-in Deployments naming them (default 20)"
    )
    parser.add_argument("--unrelated", type=int, default=50, help="ConfigMaps nobody names (default 50)")
    parser.add_argument("--edits", type=int, default=40, help="ConfigMap edits per scope (default 40)")
    parser.add_argument("--scopes", default="namespace,object")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="refreshbus-autorefresh-bench-"))
    broker, plane = Broker(work / "rabbitmq"), ControlPlane(work / "k8s")
    results: dict[str, Any] = {
        "configmaps": args.configmaps,
        "workloads": args.workloads,
        "unrelated": args.unrelated,
        "scopes": {},
    }
    try:
        print("starting RabbitMQ and kube-apiserver ...", flush=True)
        broker.start()
        plane.start()
        plane.apply_crds()
        for scope in args.scopes.split(","):
            results["scopes"][scope] = run_scope(plane, broker, work, scope, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        plane.destroy()
        broker.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
