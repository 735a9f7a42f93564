"""refreshbus against what users would pick instead, on the real node (issue 10 §4).

Run with ``make bench-vs-peers`` (root: it starts its own single-node cluster, kubelet +
containerd + runc, see tests/testenv/refreshbus_testenv/node.py; one node per machine).
The same app, the same ConfigMap change, the same number of pods, one mechanism at a time
(tests/support/refreshbus_support/vspeers.py has the app and the measurement):

- **kubelet**: a ConfigMap volume, the kubelet with its DEFAULT settings (syncFrequency 1m,
  configMapAndSecretChangeDetectionStrategy Watch): the node of this benchmark is started
  with ``kubelet_defaults``, unlike the test node, which shortens syncFrequency to 10 s;
- **Reloader**: stakater/Reloader v1.4.21 (third_party/reloader, hack/build-reloader.sh) in a
  pod, as its upstream manifest deploys it (default flags: all namespaces, env-vars strategy);
  the Deployment rolls with the default strategy (maxSurge 25 %, maxUnavailable 25 %);
- **refreshbus**: the chart with its default values (auto-refresh window 1 s), apart
  from the locally built images and the host broker.

Each edit is timed from the API's answer to the ConfigMap patch to the moment every pod
(for Reloader: every NEW pod, Ready) serves the new content; the load generator sends
requests to the Deployment's Service meanwhile. Printed: a Markdown table; written: the raw
figures (``--json``) and a chart (``--png``, matplotlib from the ``bench`` dependency group).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "testenv"), str(ROOT / "tests" / "support")]

from refreshbus_support.vspeers import (  # noqa: E402
    MECHANISMS,
    Cluster,
    EditResult,
    LoadGenerator,
    configmaps,
    measure_edit,
    wait_served,
    workload,
)
from refreshbus_testenv import images, release  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402
from refreshbus_testenv.node import NODE_IP, start_cluster  # noqa: E402

RELOADER_MANIFEST = ROOT / "tests" / "e2e" / "node" / "manifests" / "reloader.yaml"
NS = "vs-peers"
LABELS = {"refreshbus": "refreshbus (in place)", "reloader": "Reloader v1.4.21 (rolling restart)",
          "kubelet": "kubelet volume (default settings)"}  # fmt: skip
#: Per edit: the kubelet's worst case is about syncFrequency + its jitter, doubled for safety.
TIMEOUT = {"refreshbus": 60.0, "reloader": 300.0, "kubelet": 300.0}
#: The kubelet updates a pod's volumes when it syncs the pod, every syncFrequency (1m) plus up
#: to 50 % jitter. An edit made right after the previous one was served lands just after a sync
#: (the worst case); a user's edit lands anywhere in the period: wait a random part of it first.
KUBELET_PHASE = 60.0


def log(msg: str) -> None:
    print(f"[vs-peers] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is their maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_mechanism(
    plane: ControlPlane, api: Cluster, mechanism: str, replicas: int, edits: int, rng: random.Random
) -> list[EditResult]:
    name, configmap = f"app-{mechanism}", f"app-{mechanism}-content"
    objects = [*configmaps(configmap, f"{mechanism} v1"), *workload(name, mechanism, replicas, configmap)]
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    plane.kubectl("-n", NS, "apply", "-f", "-", input=manifest)
    plane.kubectl("-n", NS, "rollout", "status", f"deployment/{name}", "--timeout=300s", timeout=310)
    wait_served(api, NS, name, replicas, f"{mechanism} v1", timeout=120)
    results = []
    with LoadGenerator(api.service_url(NS, name)) as load:
        for i in range(edits):
            if mechanism == "kubelet":
                time.sleep(rng.uniform(0, KUBELET_PHASE))
            version = f"{mechanism} v{i + 2}"
            result = measure_edit(
                api, NS, name, mechanism, configmap, replicas, version, load, TIMEOUT[mechanism]
            )
            log(f"{mechanism} edit {i + 1}/{edits}: {result.seconds:.2f} s, {result.restarted} containers "
                f"restarted, {result.failed}/{result.requests} requests failed")  # fmt: skip
            results.append(result)
    plane.kubectl("-n", NS, "delete", "deployment,service", name, "--wait=true", timeout=180)
    return results


def summarise(results: dict[str, list[EditResult]]) -> list[dict[str, Any]]:
    base = percentile([r.seconds for r in results["refreshbus"]], 0.5) if results.get("refreshbus") else None
    rows = []
    for mechanism, runs in results.items():
        seconds = [r.seconds for r in runs]
        p50 = percentile(seconds, 0.5)
        rows.append({
            "mechanism": mechanism, "edits": len(runs), "p50": p50, "p99": percentile(seconds, 0.99),
            "ratio": p50 / base if base else None,
            "restarted_per_edit": sum(r.restarted for r in runs) / len(runs),
            "requests": sum(r.requests for r in runs), "failed": sum(r.failed for r in runs),
        })  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]], replicas: int) -> str:
    lines = [
        f"| {replicas} pods, one ConfigMap edit | edits | p50 | p99 | p50 vs refreshbus "
        "| containers restarted per edit | failed requests |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.0f} x" if r["ratio"] and r["mechanism"] != "refreshbus" else "1 x"
        lines.append(
            f"| {LABELS[r['mechanism']]} | {r['edits']} | {r['p50']:.2f} s | {r['p99']:.2f} s | {ratio} "
            f"| {r['restarted_per_edit']:.0f} | {r['failed']} of {r['requests']} |"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], replicas: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=120)
    names = [LABELS[r["mechanism"]] for r in rows][::-1]
    p50 = [r["p50"] for r in rows][::-1]
    p99 = [r["p99"] for r in rows][::-1]
    colours = {"refreshbus": "#2a9d8f", "reloader": "#e76f51", "kubelet": "#8d99ae"}
    bars = ax.barh(names, p50, color=[colours[r["mechanism"]] for r in rows][::-1], label="p50")
    ax.scatter(p99, names, color="black", marker="|", s=300, zorder=3, label="p99")
    ax.set_xscale("log")
    ax.set_xlabel("ConfigMap edit → every pod serves the new content (seconds, log scale)")
    cores = os.cpu_count()
    ax.set_title(f"One ConfigMap edit, {replicas} pods, real kubelet + containerd ({cores} shared cores)")
    for bar, r in zip(bars, rows[::-1], strict=True):
        note = f"  p50 {r['p50']:.1f} s · p99 {r['p99']:.1f} s · {r['restarted_per_edit']:.0f} restarts"
        note += f" · {r['failed']} failed req."
        ax.text(r["p99"], bar.get_y() + bar.get_height() / 2, note, va="center", fontsize=8)
    ax.set_xlim(min(p50) / 2, max(p99) * 60)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--edits-refreshbus", type=int, default=20)
    parser.add_argument("--edits-reloader", type=int, default=5)
    parser.add_argument("--edits-kubelet", type=int, default=5, help="1-2.5 min each")
    parser.add_argument("--seed", type=int, default=10, help="for the pauses before kubelet edits")
    parser.add_argument("--replot", action="store_true", help="table + chart from --json, no run")
    parser.add_argument("--only", choices=MECHANISMS, action="append", help="run only these (repeatable)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "vs-peers.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "vs-peers.png")
    args = parser.parse_args()
    if args.replot:
        figures = json.loads(args.json.read_text())
        print(table(figures["summary"], figures["replicas"]))
        chart(figures["summary"], figures["replicas"], args.png)
        return 0
    if os.geteuid() != 0:
        print("bench-vs-peers runs a real node (kubelet, containerd): run it as root", file=sys.stderr)
        return 2
    edits = {
        "refreshbus": args.edits_refreshbus,
        "reloader": args.edits_reloader,
        "kubelet": args.edits_kubelet,
    }
    rng = random.Random(args.seed)
    started = time.monotonic()
    built = images.build(["pause", "operator", "sidecar", "demo-nginx", "reloader"])
    workdir = Path(tempfile.mkdtemp(prefix="refreshbus-vs-peers-"))
    plane, node = start_cluster(workdir / "cluster", kubelet_defaults=True)
    kubelet_config = json.loads((node.workdir / "kubelet-config.json").read_text())
    kubelet_timings = {
        k: kubelet_config.get(k, "default")
        for k in ("syncFrequency", "configMapAndSecretChangeDetectionStrategy")
    }
    broker = Broker(workdir / "rabbitmq", host=NODE_IP)
    results: dict[str, list[EditResult]] = {}
    try:
        for tarball in built.values():
            node.import_image(tarball)
        broker.start()
        release.install(plane, broker, workdir / "helm")
        plane.kubectl("apply", "-f", str(RELOADER_MANIFEST))
        plane.kubectl("-n", "reloader", "rollout", "status", "deployment/reloader-reloader", "--timeout=120s")
        plane.kubectl("create", "namespace", NS)
        api = Cluster(plane.kubeconfig)
        log(f"cluster ready in {time.monotonic() - started:.0f} s")
        for mechanism in args.only or MECHANISMS:
            results[mechanism] = run_mechanism(plane, api, mechanism, args.replicas, edits[mechanism], rng)
    finally:
        broker.destroy()
        node.stop()
        plane.destroy()
        node.destroy()
    rows = summarise(results)
    print(table(rows, args.replicas))
    args.json.write_text(json.dumps({
        "replicas": args.replicas, "summary": rows,
        "edits": {m: [asdict(r) for r in runs] for m, runs in results.items()},
        "kubelet_timings": kubelet_timings,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "total_seconds": round(time.monotonic() - started),
    }, indent=2) + "\n")  # fmt: skip
    chart(rows, args.replicas, args.png)
    log(f"figures in {args.json}, chart in {args.png} ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
