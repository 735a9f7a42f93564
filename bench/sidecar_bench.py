"""Sidecar benchmark: memory, idle CPU, start-up time and refresh latency, on this machine.

Run with ``make bench-sidecar`` (or ``.venv/bin/python bench/sidecar_bench.py``). It starts
its own RabbitMQ node and kube-apiserver (tests/testenv), one sidecar process for one pod
object, and a tiny "app" process that timestamps every SIGHUP it receives. Nothing here
is a pass/fail test: it prints the figures (and writes them as JSON with ``--json``).

Measured:
* RSS of the sidecar after start, after 500 and after 1,000 real refreshes (each one a
  ConfigMap change + event + fetch + atomic write + SIGHUP + ack);
* idle CPU over ``--idle`` seconds: CPU time used and voluntary context switches
  (wake-ups) of all its threads;
* process start -> /readyz 200 (initial config written) and -> consuming from the broker;
* event received -> app signalled, as the sidecar measures it (``reloaded_ms`` minus the
  API fetch), and publish -> app's SIGHUP handler ran, end to end (includes the fetch).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "testenv"), str(ROOT / "tests" / "support"), str(ROOT / "sidecar")]

from refreshbus_support.bus import TestBus, make_event  # noqa: E402
from refreshbus_support.pods import create_pod  # noqa: E402
from refreshbus_support.sidecars import Sidecar, start_sidecar  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402
from refreshbus_wire import pods as podc  # noqa: E402
from refreshbus_wire.events import AckResult  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: The "app": prints the CLOCK_MONOTONIC time of every SIGHUP (same clock in every process).
APP = """\
import os, signal, sys, time
def hup(*_):
    os.write(1, (repr(time.monotonic()) + "\\n").encode())
signal.signal(signal.SIGHUP, hup)
os.write(1, b"up\\n")
while True:
    signal.pause()  # bench-app-marker
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_and_wakeups(pid: int) -> tuple[float, int, int, dict[str, int]]:
    """(CPU seconds, voluntary ctx switches, involuntary, voluntary per thread) over all threads."""
    cpu = 0.0
    vol = invol = 0
    per_thread: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                    per_thread[task.name] = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol += int(line.split()[1])
        except OSError:
            continue
    return cpu, vol, invol, per_thread


class Api:
    """Direct, kept-alive PUTs of the ConfigMap (kubectl would dominate the loop's time)."""

    def __init__(self, cluster: ControlPlane, namespace: str) -> None:
        ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
        ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
        self.conn = http.client.HTTPSConnection("127.0.0.1", cluster.api_port, context=ctx)
        self.namespace = namespace

    def put_configmap(self, name: str, data: dict[str, str]) -> str:
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": name, "namespace": self.namespace}, "data": data})
        path = f"/api/v1/namespaces/{self.namespace}/configmaps/{name}"
        self.conn.request("PUT", path, body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        payload = json.loads(resp.read())
        if resp.status == 404:
            self.conn.request("POST", f"/api/v1/namespaces/{self.namespace}/configmaps", body,
                              {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            payload = json.loads(resp.read())
        if resp.status >= 300:
            raise RuntimeError(f"PUT configmap: {resp.status} {payload}")
        return str(payload["metadata"]["resourceVersion"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def wait_http(url: str, timeout: float, check_broker: bool = False) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200 and (not check_broker or json.loads(resp.read()).get("broker")):
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refreshes", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=20.0, help="idle measurement window, seconds")
    parser.add_argument("--starts", type=int, default=7, help="start-up measurements")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="refreshbus-bench-"))
    broker = Broker(work / "rabbitmq")
    cluster = ControlPlane(work / "k8s")
    results: dict[str, Any] = {}
    app = None
    sidecar: Sidecar | None = None
    try:
        print("starting RabbitMQ and kube-apiserver ...", flush=True)
        broker.start()
        cluster.start()
        namespace = "bench"
        cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl("-n", namespace, "create", "serviceaccount", "default")
        api = Api(cluster, namespace)
        api.put_configmap("cfg", {"app.conf": "version=0\n"})
        app = subprocess.Popen([sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True)
        assert app.stdout is not None
        assert app.stdout.readline().strip() == "up"
        pod = create_pod(cluster, namespace, "bench-0", configmaps=["cfg"], action={
            podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP", podc.ENV_PROCESS: "bench-app-marker"})
        common: dict[str, Any] = dict(broker_urls=[broker.url("refreshbus-sidecar")],
                                      kubeconfig=cluster.kubeconfig, workdir=work / "sidecar",
                                      env={podc.ENV_FETCH_JITTER: "0", podc.ENV_LOG_LEVEL: "INFO"})

        # -- start-up ---------------------------------------------------------------------
        ready, consuming = [], []
        for i in range(args.starts):
            s = start_sidecar(pod, target_dir=work / f"start-{i}", wait_ready=False, **common)
            try:
                ready.append(wait_http(s.url("/readyz"), 15))
                consuming.append(ready[-1] + wait_http(s.url("/readyz"), 15, check_broker=True))
            finally:
                s.stop()
        results["start_to_ready_s"] = {
            "median": statistics.median(ready), "min": min(ready), "max": max(ready)}
        results["start_to_consuming_s"] = {"median": statistics.median(consuming), "max": max(consuming)}

        # -- the measured sidecar ------------------------------------------------------------
        sidecar = start_sidecar(pod, target_dir=work / "shared", **common)
        time.sleep(1.0)  # let start-up allocations settle before the first reading
        results["rss_after_start_kib"] = rss_kib(sidecar.pid)

        bus = TestBus(broker.url())
        internal, end_to_end, fetch, write, signal_ms = [], [], [], [], []
        rss_mid = 0
        log_offset = sidecar.log.stat().st_size
        for n in range(1, args.refreshes + 1):
            rv = api.put_configmap("cfg", {"app.conf": f"version={n}\n"})
            event = make_event(namespace, [("ConfigMap", "cfg", rv)])
            published = time.monotonic()
            bus.publish(event)
            ack = bus.wait_ack(event.id, timeout=30)
            if ack.result is not AckResult.OK:
                raise RuntimeError(f"refresh {n}: {ack.result.value} {ack.error}")
            signalled = float(app.stdout.readline())  # written before the ack was sent
            end_to_end.append((signalled - published) * 1000)
            if n == args.refreshes // 2:
                rss_mid = rss_kib(sidecar.pid)
        bus.close()
        with sidecar.log.open() as fh:
            fh.seek(log_offset)
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("reloaded_ms") is not None and rec.get("fetch_ms") is not None:
                    internal.append(rec["reloaded_ms"] - rec["fetch_ms"])
                    fetch.append(rec["fetch_ms"])
                    write.append(rec["written_ms"] - rec["fetch_ms"])
                    signal_ms.append(rec["reloaded_ms"] - rec["written_ms"])
        results["rss_after_half_kib"] = rss_mid
        results["rss_after_refreshes_kib"] = rss_kib(sidecar.pid)
        results["refreshes"] = args.refreshes
        results["received_to_signalled_excl_fetch_ms"] = {
            "p50": pct(internal, 50), "p99": pct(internal, 99), "max": max(internal), "n": len(internal)}
        results["api_fetch_ms"] = {"p50": pct(fetch, 50), "p99": pct(fetch, 99)}
        results["breakdown_ms"] = {
            "received_to_fetch_start_and_write": {"p50": pct(write, 50), "p99": pct(write, 99)},
            "find_process_and_signal": {"p50": pct(signal_ms, 50), "p99": pct(signal_ms, 99)},
        }
        results["publish_to_app_signal_ms"] = {"p50": pct(end_to_end, 50), "p99": pct(end_to_end, 99)}

        # -- idle ----------------------------------------------------------------------------
        # pika keeps each cancelled process_data_events timer until its deadline (up to the
        # loop's 5 s tick), so activity leaves up to one deferred wake-up per event for 5 s;
        # measure the steady idle state after that.
        time.sleep(6.0)
        cpu0, vol0, inv0, threads0 = cpu_and_wakeups(sidecar.pid)
        time.sleep(args.idle)
        cpu1, vol1, inv1, threads1 = cpu_and_wakeups(sidecar.pid)
        results["idle"] = {
            "seconds": args.idle,
            "cpu_seconds": round(cpu1 - cpu0, 3),
            "cpu_percent": round(100 * (cpu1 - cpu0) / args.idle, 3),
            "voluntary_wakeups": vol1 - vol0,
            "wakeups_per_second": round((vol1 - vol0) / args.idle, 2),
            "involuntary_switches": inv1 - inv0,
            "wakeups_per_thread": {t: n - threads0.get(t, 0) for t, n in threads1.items()},
        }
    finally:
        if sidecar is not None:
            sidecar.stop()
        if app is not None:
            app.send_signal(signal.SIGTERM)
            app.kill()
            app.wait()
            if app.stdout:
                app.stdout.close()
        cluster.destroy()
        broker.destroy()

    print(json.dumps(results, indent=2))
    r = results
    print("\nrefreshbus-sidecar on this machine:")
    print(f"  RSS after start            {r['rss_after_start_kib'] / 1024:.1f} MiB")
    print(f"  RSS after {r['refreshes'] // 2} refreshes      {r['rss_after_half_kib'] / 1024:.1f} MiB")
    print(f"  RSS after {r['refreshes']} refreshes     {r['rss_after_refreshes_kib'] / 1024:.1f} MiB")
    print(f"  idle {r['idle']['seconds']:.0f} s: CPU {r['idle']['cpu_seconds']} s "
          f"({r['idle']['cpu_percent']} %), {r['idle']['wakeups_per_second']} wake-ups/s")
    print(f"  start -> ready             median {r['start_to_ready_s']['median'] * 1000:.0f} ms, "
          f"max {r['start_to_ready_s']['max'] * 1000:.0f} ms")
    i = r["received_to_signalled_excl_fetch_ms"]
    print(f"  received -> signalled      p50 {i['p50']:.2f} ms, p99 {i['p99']:.2f} ms (excl. API fetch)")
    f = r["api_fetch_ms"]
    print(f"  API fetch                  p50 {f['p50']:.2f} ms, p99 {f['p99']:.2f} ms")
    e = r["publish_to_app_signal_ms"]
    print(f"  publish -> app SIGHUP      p50 {e['p50']:.2f} ms, p99 {e['p99']:.2f} ms (end to end)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
