"""``make demo`` on the real single-node cluster of ``make cluster-up-node``.

``demo/demo.py`` hands over to :func:`main` when that cluster is up (its state under
``.cluster/node`` answers: API server and broker ports open). Against it, with what the
end-to-end suite uses (tests/e2e/node): the locally built images, ``helm install`` of the
chart with the host broker (``broker.existingSecret``), and the suite's nginx workload
(tests/e2e/node/manifests/apps.yaml: ConfigMap ``nginx-config`` + Deployment ``web-nginx``,
auto-refresh on) in namespace ``refreshbus-demo``. Then: edit the ConfigMap, every pod serves
the new config with restartCount 0, and a targeted ConfigRefresh of one pod.

Like the process-level demo: on a terminal everything stays until Ctrl-C; without one (or
with CI=true) it exits after printing, non-zero if anything did not succeed. Either way it
removes what it installed when it exits (``make demo-down`` does the same for a demo that
was killed); the node itself stays (``make cluster-down-node``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "testenv")]

from refreshbus_testenv.broker import Broker  # noqa: E402
from refreshbus_testenv.controlplane import ExistingCluster  # noqa: E402
from refreshbus_testenv.procs import port_open  # noqa: E402

NODE_DIR = Path(os.environ.get("REFRESHBUS_NODE_DIR", ROOT / ".cluster" / "node")).resolve()
MARKER = ROOT / ".demo" / "node-demo.json"  # "the demo installed the release": demo-down's cue
NS = "refreshbus-demo"
RELEASE, RELEASE_NS = "refreshbus", "refreshbus-system"
APPS = ROOT / "tests" / "e2e" / "node" / "manifests" / "apps.yaml"
IMAGES = ["operator", "sidecar", "demo-nginx"]
BOLD, DIM, GREEN, RED, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("", "", "", "", "")
)


def step(n: int, text: str) -> None:
    print(f"\n{BOLD}[{n}] {text}{RESET}", flush=True)


def note(text: str) -> None:
    print(f"    {DIM}{text}{RESET}", flush=True)


def show(text: str) -> None:
    print("    " + text.rstrip().replace("\n", "\n    "), flush=True)


def interactive() -> bool:
    return (
        sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")
    )


def state() -> dict[str, Any] | None:
    """``make cluster-up-node``'s state, if that cluster (API server + broker) answers."""
    path = NODE_DIR / "state.json"
    if not path.exists():
        return None
    with contextlib.suppress(ValueError, KeyError, OSError):
        st = json.loads(path.read_text())
        if (
            "node" in st
            and port_open(st["api_port"], st["api_host"])
            and port_open(st["amqp_port"], st["amqp_host"])
        ):
            return dict(st)
    return None


def available() -> bool:
    return state() is not None


def helm() -> str:
    """The helm binary from hack/build-helm.sh's cache (built on first use)."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, KeyError, ValueError, subprocess.SubprocessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def served(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=2) as resp:
        return str(resp.read().decode()).strip()


def greeting_conf(text: str) -> str:
    return f'set $greeting "{text}";\n'


def nginx_manifests() -> str:
    """The suite's nginx ConfigMap and Deployment, as they are in apps.yaml."""
    docs = [d for d in yaml.safe_load_all(APPS.read_text()) if d]
    keep = [d for d in docs if d["metadata"]["name"] in ("nginx-config", "web-nginx")]
    return "\n---\n".join(json.dumps(d) for d in keep)


def pod_views(cluster: ExistingCluster) -> list[dict[str, Any]]:
    """Running web-nginx pods: name, ip, containers (name -> id), restarts."""
    views = []
    for p in cluster.get_json("-n", NS, "pods", "-l", "app=web-nginx")["items"]:
        if p["metadata"].get("deletionTimestamp") or p["status"].get("phase") != "Running":
            continue
        statuses = p["status"].get("containerStatuses", []) + p["status"].get("initContainerStatuses", [])
        views.append({
            "name": p["metadata"]["name"], "ip": p["status"].get("podIP", ""),
            "containers": {s["name"]: s.get("containerID", "") for s in statuses},
            "restarts": sum(s.get("restartCount", 0) for s in statuses),
        })  # fmt: skip
    return sorted(views, key=lambda v: v["name"])


def nginx_master(cluster: ExistingCluster, pod: str) -> str:
    return cluster.kubectl("-n", NS, "exec", pod, "-c", "nginx", "--", "cat", "/tmp/nginx.pid").stdout.strip()


def ensure_images(st: dict[str, Any]) -> None:
    """Build the images the demo uses (cached: seconds when nothing changed) and import
    those the node lacks or that were rebuilt after ``make cluster-up-node`` imported them."""
    from refreshbus_testenv import images
    from refreshbus_testenv.node import Node

    node = Node(Path(st["node"]["workdir"]), ExistingCluster(st["kubeconfig"]), pids=dict(st["node"]["pids"]))
    built = images.build(IMAGES)
    present = set(node.images())
    imported_at = (NODE_DIR / "state.json").stat().st_mtime
    for ref, tarball in built.items():
        if ref not in present or tarball.stat().st_mtime > imported_at:
            node.import_image(tarball)
            note(f"imported {ref.removeprefix('docker.io/')}")
        else:
            note(f"{ref.removeprefix('docker.io/')} already on the node")


def install(cluster: ExistingCluster, st: dict[str, Any]) -> None:
    """``helm install`` as the e2e suite does: local images, the host broker."""
    broker = Broker(NODE_DIR / "rabbitmq", port=st["amqp_port"], host=st["amqp_host"])
    cluster.kubectl("create", "namespace", RELEASE_NS, check=False)
    for name, key, user in (
        ("rb-broker", "operator-urls", "refreshbus-operator"),
        ("rb-broker-sidecar", "sidecar-urls", "refreshbus-sidecar"),
    ):
        secret = cluster.kubectl(
            "-n", RELEASE_NS, "create", "secret", "generic", name,
            f"--from-literal={key}={broker.url(user)}", "--dry-run=client", "-o", "json",
        ).stdout  # fmt: skip
        cluster.kubectl("-n", RELEASE_NS, "apply", "-f", "-", input=secret)
    values = {
        "operator": {
            "image": {"repository": "refreshbus/operator", "tag": "dev", "pullPolicy": "Never"},
            "extraEnv": [{"name": "REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE", "value": "0.5"}],
        },
        "sidecar": {"image": {"repository": "refreshbus/sidecar", "tag": "dev", "pullPolicy": "Never"}},
        "broker": {"existingSecret": "rb-broker", "existingSidecarSecret": "rb-broker-sidecar"},
    }
    MARKER.parent.mkdir(exist_ok=True)
    MARKER.write_text(json.dumps({"kubeconfig": st["kubeconfig"]}))
    values_file = MARKER.parent / "node-demo-values.json"
    values_file.write_text(json.dumps(values))
    proc = subprocess.run(
        [helm(), "upgrade", "--install", RELEASE, str(ROOT / "charts" / "refreshbus"), "-n", RELEASE_NS,
         "-f", str(values_file), "--wait", "--timeout", "180s", f"--kubeconfig={cluster.kubeconfig}"],
        capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"helm install failed:\n{proc.stdout}\n{proc.stderr}")

    def ca_bundles() -> bool:
        hooks = cluster.get_json("mutatingwebhookconfigurations")["items"]
        bundles = [w["clientConfig"].get("caBundle") for h in hooks for w in h["webhooks"]]
        return bool(bundles) and all(bundles)

    wait_for(ca_bundles, 60, "the operator to register its injection webhook")


def uninstall(kubeconfig: str) -> None:
    """Remove what the demo installed: its namespace, then the release (operator last, so
    the ConfigRefresh objects are cleaned up while it runs), then the release namespace."""
    cluster = ExistingCluster(kubeconfig)
    cluster.start()  # finds kubectl; fails if the cluster does not answer
    cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=90s",
                    check=False, timeout=120)  # fmt: skip
    subprocess.run(
        [helm(), "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "90s",
         f"--kubeconfig={kubeconfig}"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    cluster.kubectl("delete", "namespace", RELEASE_NS, "--ignore-not-found", "--timeout=90s",
                    check=False, timeout=120)  # fmt: skip
    (MARKER.parent / "node-demo-values.json").unlink(missing_ok=True)
    MARKER.unlink(missing_ok=True)


def down() -> int:
    """``make demo-down``: uninstall what a node demo left (the node stays)."""
    if not MARKER.exists():
        return 0
    kubeconfig = json.loads(MARKER.read_text())["kubeconfig"]
    if not available():
        print("the node demo's cluster is gone; nothing to uninstall")
        MARKER.unlink(missing_ok=True)
        return 0
    print(f"uninstalling the demo from the node (namespace {NS}, helm release {RELEASE}) ...", flush=True)
    uninstall(kubeconfig)
    print("node demo removed (the node keeps running: `make cluster-down-node` stops it)")
    return 0


def main() -> int:
    st = state()
    if st is None:
        print(f"{RED}no real node is up (make cluster-up-node){RESET}", file=sys.stderr)
        return 1
    cluster = ExistingCluster(st["kubeconfig"])
    ok = False
    try:
        step(1, "Use the real single-node cluster of `make cluster-up-node`")
        cluster.start()
        note(
            f"API server {cluster.server}, node {st['node']['name']} ({st['node']['ip']}: kubelet + "
            f"containerd + runc), RabbitMQ on the host at amqp://{st['amqp_host']}:{st['amqp_port']}"
        )
        note(f"pods are real containers here; the same cluster `make e2e` uses. State: {NODE_DIR}")
        ensure_images(st)

        step(2, f"helm install the chart (operator + injection webhook + CRDs) into {RELEASE_NS}")
        note("local images (pullPolicy Never) and the host broker (broker.existingSecret), as `make e2e`")
        started = time.monotonic()
        install(cluster, st)
        note(f"installed in {time.monotonic() - started:.0f}s")
        show(cluster.kubectl("-n", RELEASE_NS, "get", "deploy,pods").stdout)

        step(3, f"Deploy nginx (2 replicas) in namespace {NS!r}, opted in by annotations only")
        cluster.kubectl("create", "namespace", NS, check=False)
        wait_for(lambda: cluster.kubectl("-n", NS, "get", "sa", "default", check=False).returncode == 0,
                 30, "the namespace's default ServiceAccount")  # fmt: skip
        cluster.kubectl("-n", NS, "apply", "-f", "-", input=nginx_manifests())
        note(f"from {APPS.relative_to(ROOT)}: ConfigMap nginx-config + Deployment web-nginx, annotated")
        for line in ("refreshbus.io/inject: true", "refreshbus.io/configmaps: nginx-config",
                     "refreshbus.io/signal: SIGHUP   refreshbus.io/process: 'nginx: master'",
                     "refreshbus.io/auto-refresh: true"):  # fmt: skip
            note(f"  {line}")
        cluster.kubectl("-n", NS, "rollout", "status", "deployment/web-nginx", "--timeout=180s", timeout=200)
        before = pod_views(cluster)
        masters = {}
        for p in before:
            if "refreshbus-sidecar" not in p["containers"]:
                raise RuntimeError(f"{p['name']} has no refreshbus-sidecar: the webhook did not inject it")
            masters[p["name"]] = nginx_master(cluster, p["name"])
            print(f"    {p['name']} ({p['ip']}): containers {', '.join(sorted(p['containers']))}; "
                  f"serves {served(p['ip'])!r} (nginx master pid {masters[p['name']]})")  # fmt: skip
        note("the webhook added the refreshbus-sidecar container; nginx itself is unmodified")

        step(4, "kubectl patch configmap nginx-config: greeting 'nginx v2' (nothing else is done)")
        cluster.kubectl("-n", NS, "patch", "configmap", "nginx-config", "--type", "merge",
                        "-p", json.dumps({"data": {"greeting.conf": greeting_conf("nginx v2")}}))  # fmt: skip
        edited = time.monotonic()
        latency: dict[str, float] = {}
        deadline = edited + 30
        while len(latency) < len(before) and time.monotonic() < deadline:
            for p in before:
                with contextlib.suppress(OSError):
                    if p["name"] not in latency and served(p["ip"]) == "nginx v2":
                        latency[p["name"]] = time.monotonic() - edited
            time.sleep(0.05)
        note("the operator saw the change, created a ConfigRefresh, each sidecar wrote the file + SIGHUP")

        step(5, "Every pod, before -> after (same containers, restartCount 0: reloaded in place)")
        after = {p["name"]: p for p in pod_views(cluster)}
        all_ok = bool(before)
        for p in before:
            now = after.get(p["name"])
            master = nginx_master(cluster, p["name"]) if now else "gone"
            text = served(p["ip"]) if now else "gone"
            good = (
                now is not None and text == "nginx v2" and now["restarts"] == 0
                and now["containers"] == p["containers"] and master == masters[p["name"]]
            )  # fmt: skip
            all_ok &= good
            took = f"{latency[p['name']]:.1f}s after the edit" if p["name"] in latency else "not updated"
            print(f"    {p['name']}: 'nginx v1' -> {text!r} ({took}), restartCount "
                  f"{now['restarts'] if now else '?'}, nginx master pid {masters[p['name']]} -> {master}  "
                  f"{GREEN + 'OK' if good else RED + 'NOT RELOADED IN PLACE'}{RESET}")  # fmt: skip

        def auto_done() -> list[dict[str, Any]] | None:
            items = cluster.get_json("-n", NS, "configrefresh")["items"]
            phases = [(i.get("status") or {}).get("phase") for i in items]
            return items if items and all(ph in ("Succeeded", "PartiallyFailed", "Failed", "TimedOut")
                                          for ph in phases) else None  # fmt: skip

        items = wait_for(auto_done, 30, "the auto-created ConfigRefresh to finish")
        all_ok &= all(i["status"]["phase"] == "Succeeded" for i in items)
        note("kubectl get cfr   (created by the operator for the edit: auto-refresh)")
        show(cluster.kubectl("-n", NS, "get", "cfr").stdout)

        target = before[0]["name"]
        step(6, f"kubectl apply a targeted ConfigRefresh: only pod {target}")
        cfr = {
            "apiVersion": "refreshbus.io/v1alpha1", "kind": "ConfigRefresh",
            "metadata": {"name": "refresh-one-pod", "namespace": NS},
            "spec": {"sources": [{"configMap": {"name": "nginx-config"}}], "target": {"pods": [target]},
                     "deadlineSeconds": 30},
        }  # fmt: skip
        show(yaml.safe_dump(cfr, sort_keys=False))
        cluster.kubectl("-n", NS, "delete", "cfr", "refresh-one-pod", "--ignore-not-found")
        cluster.kubectl("-n", NS, "apply", "-f", "-", input=json.dumps(cfr))
        cluster.kubectl("-n", NS, "wait", "--for=condition=Complete", "cfr/refresh-one-pod",
                        "--timeout=60s", check=False, timeout=70)  # fmt: skip
        status = cluster.get_json("-n", NS, "cfr", "refresh-one-pod").get("status") or {}
        counts = status.get("counts", {})
        targeted_ok = status.get("phase") == "Succeeded" and counts.get("targets") == 1
        all_ok &= targeted_ok
        note("kubectl get cfr")
        show(cluster.kubectl("-n", NS, "get", "cfr").stdout)
        print(f"    message: {status.get('message')}")
        for r in status.get("results", []):
            note(f"{r['pod']}: {r['result']}" + (f" ({r['reason']})" if r.get("reason") else ""))
        note("one target, one ack. Its pod already had 'nginx v2' (auto-refresh), so the sidecar answers")
        note("'unchanged' and does not signal nginx again; the other pod was not asked at all")

        ok = all_ok
        print(f"\n{BOLD}{GREEN if ok else RED}"
              f"{'every pod reloaded in place; both refreshes succeeded' if ok else 'demo did not succeed'}"
              f"{RESET}")  # fmt: skip
        if interactive():
            print(
                f"\nEverything keeps running on the node. Try it yourself:\n"
                f"    export KUBECONFIG={st['kubeconfig']}\n"
                f"    kubectl -n {NS} get pods,cfr\n"
                f"    kubectl -n {NS} edit configmap nginx-config\n"
                f"    kubectl -n {NS} describe cfr refresh-one-pod\n"
                f"Ctrl-C (or `make demo-down`) removes the demo; `make cluster-down-node` stops the node.",
                flush=True,
            )
            for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or kill: remove the demo (finally)
                signal.signal(sig, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"\n{RED}demo failed: {exc}{RESET}", file=sys.stderr)
        return 1
    finally:
        if MARKER.exists():
            print("\nremoving the demo from the node (the node keeps running) ...", flush=True)
            try:
                uninstall(st["kubeconfig"])
            except Exception as exc:
                print(f"{RED}could not remove it: {exc}; try `make demo-down`{RESET}", file=sys.stderr)
