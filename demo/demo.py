"""``make demo``: refreshbus end to end on this machine, in one command.

Starts a local Kubernetes API server and RabbitMQ (the same code the tests use), installs
the CRDs, starts the operator, creates three "pods" of a Deployment ``orders`` (pod API
objects, each with a real refreshbus sidecar process and a real, unmodified Node.js app),
changes their ConfigMap, applies ``examples/refresh.yaml`` and shows what happened: the
``kubectl get cfr`` table and every app's config before and after (same PID: reloaded in
place, not restarted).

When the real single-node cluster of ``make cluster-up-node`` is up, the demo runs there
instead (``demo/node_demo.py``: helm install, real nginx pods with injected sidecars); set
``REFRESHBUS_DEMO=processes`` to keep the process-level demo anyway.

Interactive terminal: everything keeps running until Ctrl-C (or ``make demo-down`` from
another shell). Without a terminal, or with CI=true: exits after printing the result,
non-zero if the refresh did not succeed.

    python demo/demo.py          # run the demo
    python demo/demo.py down     # stop a demo left running
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "testenv"), str(ROOT / "tests" / "support"), str(ROOT / "sidecar")]

from refreshbus_support import apps as apps_mod  # noqa: E402
from refreshbus_support.pods import Owner, ack_token, create_pod  # noqa: E402
from refreshbus_support.sidecars import start_sidecar  # noqa: E402
from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ControlPlane  # noqa: E402
from refreshbus_testenv.procs import free_port, stop_group  # noqa: E402
from refreshbus_wire import pods as podc  # noqa: E402

WORK = ROOT / ".demo"
STATE = WORK / "state.json"
NS = "demo"
OPERATOR_BIN = Path(sys.executable).parent / "refreshbus-operator"
BOLD, DIM, GREEN, RED, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("", "", "", "", "")
)


def step(n: int, text: str) -> None:
    print(f"\n{BOLD}[{n}] {text}{RESET}", flush=True)


def note(text: str) -> None:
    print(f"    {DIM}{text}{RESET}", flush=True)


def interactive() -> bool:
    return (
        sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")
    )


def down() -> int:
    if not STATE.exists():
        print("no demo running")
        return 0
    state = json.loads(STATE.read_text())
    for pid in state.get("pids", []):
        with contextlib.suppress(Exception):
            stop_group(pid, timeout=10)
    STATE.unlink()
    print("demo stopped")
    return 0


def config(greeting: str) -> dict[str, str]:
    return {"config.json": json.dumps({"greeting": greeting, "featureX": greeting.endswith("v2")})}


def put_configmap(plane: ControlPlane, data: dict[str, str]) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app-config", "namespace": NS},
        "data": data,
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def main() -> int:
    sys.path.insert(0, str(ROOT / "demo"))
    import node_demo

    if len(sys.argv) > 1 and sys.argv[1] == "down":
        node_demo.down()
        return down()
    if os.environ.get("REFRESHBUS_DEMO") != "processes" and node_demo.available():
        return node_demo.main()
    if STATE.exists():
        down()
    WORK.mkdir(exist_ok=True)
    pids: list[int] = []
    broker = Broker(WORK / "rabbitmq")
    plane = ControlPlane(WORK / "k8s")
    operator = None
    ok = False
    try:
        step(1, "Start a local Kubernetes API server (etcd + kube-apiserver) and RabbitMQ")
        note("real processes on loopback, built/installed by the project itself (first run builds them)")
        import shutil

        for leftover in ("rabbitmq", "k8s", "pods", "sidecars", "apps", "operator.log"):
            path = WORK / leftover
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        broker.start()
        plane.start()
        pids += [broker.pid or 0, *plane.pids.values()]
        STATE.write_text(json.dumps({"pids": pids}))
        plane.apply_crds()
        note(
            f"API server {plane.server}, RabbitMQ amqp://127.0.0.1:{broker.port}; ConfigRefresh CRD installed"
        )

        step(2, "Start the refreshbus operator")
        env = {
            **os.environ,
            "KUBECONFIG": plane.kubeconfig,
            "REFRESHBUS_BROKER_URLS": broker.url("refreshbus-operator"),
        }
        log = (WORK / "operator.log").open("ab")
        import subprocess

        operator = subprocess.Popen(
            [
                str(OPERATOR_BIN),
                "--standalone",
                "--namespace",
                NS,
                "--metrics-port",
                str(free_port()),
                "--log-format",
                "plain",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        pids.append(operator.pid)
        STATE.write_text(json.dumps({"pids": pids}))
        deadline = time.monotonic() + 30
        while "refreshbus operator started" not in (WORK / "operator.log").read_text(errors="replace"):
            if operator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the operator did not start; see .demo/operator.log")
            time.sleep(0.1)
        note("log: .demo/operator.log")

        step(3, f"Create namespace {NS!r}, ConfigMap app-config (greeting 'hello v1') and Deployment orders")
        plane.kubectl("create", "namespace", NS)
        plane.kubectl("-n", NS, "create", "serviceaccount", "default")
        put_configmap(plane, config("hello v1"))
        labels = {"app": "orders"}
        plane.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "orders", "namespace": NS},
                    "spec": {
                        "replicas": 3,
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {
                                "labels": labels,
                                "annotations": {
                                    "refreshbus.io/inject": "true",
                                    "refreshbus.io/configmaps": "app-config",
                                    "refreshbus.io/signal": "SIGHUP",
                                },
                            },
                            "spec": {"containers": [{"name": "app", "image": "node"}]},
                        },
                    },
                }
            ),
        )

        step(4, "Start 3 pods of orders: pod objects + a real sidecar + a real Node.js app each")
        note("no kubelet here: pods are API objects marked Running; the sidecar and app are local processes")
        members = []
        for i in range(3):
            name = f"orders-5d8f9c7b6-{'abc'[i]}{i}x{i}z"
            shared = WORK / "pods" / name
            port = free_port()
            cfg = shared / "configmap-app-config" / "config.json"
            pattern = rf"config-server\.js {port} {re.escape(str(cfg))}$"
            pod = create_pod(
                plane,
                NS,
                name,
                labels=labels,
                owner=Owner.replicaset_of("orders"),
                configmaps=["app-config"],
                action={podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP", podc.ENV_PROCESS: pattern},
            )
            sidecar = start_sidecar(
                pod,
                broker_urls=[broker.url("refreshbus-sidecar")],
                kubeconfig=plane.kubeconfig,
                target_dir=shared,
                workdir=WORK / "sidecars" / name,
                # What the injector mounts: the pod's token for the ack audience.
                ack_token=ack_token(plane, NS, pod.name, pod.uid),
            )
            pids.append(sidecar.pid)
            app = apps_mod.start_node_app(WORK / "apps" / name, cfg, port=port)
            pids.append(app.pid)
            STATE.write_text(json.dumps({"pids": pids}))
            members.append((name, app))
        before = {}
        for name, app in members:
            state = json.loads(app.get("/")[1])
            before[name] = state
            note(f"{name}: pid {state['pid']}, serves {json.dumps(state['config'])}")

        step(5, "Change the ConfigMap to 'hello v2' (the apps do not notice anything yet)")
        put_configmap(plane, config("hello v2"))

        step(
            6,
            "kubectl apply -f examples/refresh.yaml   (refresh app-config in every pod of Deployment orders)",
        )
        print(
            (ROOT / "examples" / "refresh.yaml")
            .read_text()
            .split("apiVersion", 1)[1]
            .join(["    apiVersion", ""])
            .replace("\n", "\n    ")
        )
        started = time.monotonic()
        plane.kubectl("-n", NS, "apply", "-f", str(ROOT / "examples" / "refresh.yaml"))
        plane.kubectl(
            "-n", NS, "wait", "--for=condition=Complete", "cfr/refresh-orders", "--timeout=60s", check=False
        )
        elapsed = time.monotonic() - started
        obj = plane.get_json("-n", NS, "cfr", "refresh-orders")
        phase = obj.get("status", {}).get("phase")

        step(7, f"Result after {elapsed:.1f}s:  kubectl get cfr")
        print("    " + plane.kubectl("-n", NS, "get", "cfr").stdout.replace("\n", "\n    ").rstrip())
        print(f"    message: {obj.get('status', {}).get('message')}")
        for r in obj.get("status", {}).get("results", []):
            note(
                f"{r['pod']}: {r['result']} in {r.get('latencyMs', '?')} ms"
                + (f" ({r['reason']})" if r.get("reason") else "")
            )

        step(8, "Each app, before -> after (same PID: reloaded in place by SIGHUP, not restarted)")
        all_new = True
        for name, app in members:
            after = json.loads(app.get("/")[1])
            same = after["pid"] == before[name]["pid"]
            fresh = after["config"]["greeting"] == "hello v2"
            all_new &= same and fresh
            mark = f"{GREEN}OK{RESET}" if same and fresh else f"{RED}NOT UPDATED{RESET}"
            print(
                f"    {name}: {before[name]['config']['greeting']!r} -> {after['config']['greeting']!r}  "
                f"(pid {before[name]['pid']} -> {after['pid']}, config loads {before[name]['loads']} -> "
                f"{after['loads']})  {mark}"
            )
        ok = phase == "Succeeded" and all_new
        print(
            f"\n{BOLD}{GREEN if ok else RED}refresh {'succeeded' if ok else 'did not succeed: ' + str(phase)}"
            f"{RESET}"
        )
        if interactive():
            print(
                f"\nEverything keeps running. Try it yourself:\n"
                f"    export KUBECONFIG={plane.kubeconfig}\n"
                f"    kubectl -n {NS} edit configmap app-config\n"
                f"    kubectl -n {NS} delete cfr refresh-orders\n"
                f"    kubectl -n {NS} apply -f examples/refresh.yaml\n"
                f"    kubectl -n {NS} describe cfr refresh-orders\n"
                f"Ctrl-C (or `make demo-down`) stops everything.",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"\n{RED}demo failed: {exc}{RESET}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping the demo ...", flush=True)
        for pid in reversed(pids[len(plane.pids) + 1 :]):
            with contextlib.suppress(Exception):
                stop_group(pid, timeout=10)
        plane.stop()
        broker.stop()
        STATE.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
