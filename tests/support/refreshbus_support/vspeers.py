"""One ConfigMap edit, three ways into running apps (issue 10 §4): kubelet propagation of
a ConfigMap volume, stakater/Reloader's rolling restart, refreshbus's in-place reload.

Shared by the benchmark (bench/vs_peers_bench.py, ``make bench-vs-peers``) and its short
version in the node suite (tests/e2e/node/test_vs_peers.py). Everything runs for real on
the node: the same app (nginx from refreshbus/demo-nginx:dev serving ``version.txt`` of its
ConfigMap volume, read from disk on every request), the same Deployment shape, one
mechanism each:

- ``kubelet``: nothing but the volume; the app serves the new file once the kubelet has
  updated the volume (the most favourable case for it: an app that caches its config
  would also need a reloader on top);
- ``reloader``: the Deployment carries ``reloader.stakater.com/auto: "true"``; Reloader
  patches the pod template and the Deployment rolls;
- ``refreshbus``: the pod template opts in (inject, the ConfigMap, SIGHUP to the nginx
  master, auto-refresh); the sidecar swaps the file in place and signals nginx.

An edit is done when every live (Ready, not terminating) pod of the Deployment serves the
new content and there are exactly ``replicas`` of them. A small load generator sends
requests to the Deployment's Service (new connection per request) meanwhile and counts the
ones that failed.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import kubernetes

MECHANISMS = ("refreshbus", "reloader", "kubelet")
KEY = "version.txt"
NGINX_CONF = """\
# The vs-peers app: serves the mounted ConfigMap key on every request (no open_file_cache),
# so what it serves is what is on disk now.
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path /tmp/client_body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    server {
        listen 8080;
        location = /healthz { default_type text/plain; return 200 "ok\\n"; }
        location / { default_type text/plain; root /etc/bench/config; try_files /version.txt =404; }
    }
}
"""


def configmaps(name: str, version: str) -> list[dict[str, Any]]:
    """The content ConfigMap ``name`` (the one edited) and the app's nginx.conf."""
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {KEY: version}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "vs-peers-nginx"},
         "data": {"nginx.conf": NGINX_CONF}},
    ]  # fmt: skip


def workload(name: str, mechanism: str, replicas: int, configmap: str) -> list[dict[str, Any]]:
    """Deployment + Service ``name`` serving ``configmap``, opted in to ``mechanism``."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r} (one of {', '.join(MECHANISMS)})")
    pod_annotations = {}
    deploy_annotations = {}
    if mechanism == "refreshbus":
        pod_annotations = {
            "refreshbus.io/inject": "true",
            "refreshbus.io/configmaps": configmap,
            "refreshbus.io/signal": "SIGHUP",
            "refreshbus.io/process": "nginx: master",
            "refreshbus.io/auto-refresh": "true",
        }
    elif mechanism == "reloader":
        deploy_annotations = {"reloader.stakater.com/auto": "true"}
    labels = {"app": name, "vs-peers": mechanism}
    container = {
        "name": "nginx",
        "image": "refreshbus/demo-nginx:dev",
        "imagePullPolicy": "Never",
        "command": ["/usr/sbin/nginx", "-c", "/etc/bench/nginx/nginx.conf", "-g", "daemon off;"],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
        # The usual zero-downtime setup for rolling updates: keep serving while the endpoint
        # is removed, so failed requests during Reloader's restarts are not a naive spec's.
        "lifecycle": {"preStop": {"sleep": {"seconds": 3}}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/bench/config"},
            {"name": "nginx", "mountPath": "/etc/bench/nginx"},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": deploy_annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": {
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": configmap}},
                        {"name": "nginx", "configMap": {"name": "vs-peers-nginx"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return [deployment, service]


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


class LoadGenerator:
    """Requests to ``url`` from ``workers`` threads, each pausing ``pause`` s between
    requests, a new connection each time; bounded: it stops by itself after ``limit`` s."""

    def __init__(self, url: str, workers: int = 2, pause: float = 0.02, limit: float = 1800) -> None:
        self.url, self.pause, self.limit = url, pause, limit
        self.lock = threading.Lock()
        self.sent = 0
        self.failures: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> LoadGenerator:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()

    def counts(self) -> tuple[int, int]:
        """(requests sent, requests failed) so far."""
        with self.lock:
            return self.sent, sum(self.failures.values())

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stopping.is_set() and time.monotonic() < deadline:
            failure = None
            try:
                fetch(self.url, timeout=2.0)
            except OSError as exc:  # HTTPError (non-2xx), refused, reset, timed out
                failure = type(exc).__name__
            with self.lock:
                self.sent += 1
                if failure:
                    self.failures[failure] += 1
            self.stopping.wait(self.pause)


@dataclass(frozen=True)
class PodState:
    uid: str
    ip: str
    ready: bool
    containers: dict[str, str]  # name -> container ID


def _pod_state(pod: Any) -> PodState:
    statuses = (pod.status.container_statuses or []) + (pod.status.init_container_statuses or [])
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    return PodState(
        uid=pod.metadata.uid,
        ip=pod.status.pod_ip or "",
        ready=ready and pod.status.phase == "Running",
        containers={s.name: s.container_id or "" for s in statuses},
    )


@dataclass
class Cluster:
    """The few API calls the comparison makes, through one client (no kubectl per poll)."""

    kubeconfig: str
    core: Any = field(init=False)
    apps: Any = field(init=False)

    def __post_init__(self) -> None:
        client = kubernetes.config.new_client_from_config(config_file=self.kubeconfig)
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)

    def live_pods(self, ns: str, app: str) -> dict[str, PodState]:
        """Pods of ``app`` that are not terminating, by name."""
        pods = self.core.list_namespaced_pod(ns, label_selector=f"app={app}").items
        return {p.metadata.name: _pod_state(p) for p in pods if p.metadata.deletion_timestamp is None}

    def settled(self, ns: str, app: str, replicas: int) -> bool:
        """Exactly ``replicas`` pods, all Ready, none terminating (a rollout is over)."""
        pods = self.core.list_namespaced_pod(ns, label_selector=f"app={app}").items
        states = [_pod_state(p) for p in pods]
        return len(pods) == replicas and all(s.ready for s in states)

    def set_content(self, ns: str, configmap: str, version: str) -> None:
        self.core.patch_namespaced_config_map(configmap, ns, {"data": {KEY: version}})

    def service_url(self, ns: str, name: str) -> str:
        ip = self.core.read_namespaced_service(name, ns).spec.cluster_ip
        return f"http://{ip}:80/"


@dataclass(frozen=True)
class EditResult:
    """One edit: seconds from the API's answer to the patch until every app served it;
    containers restarted or replaced, requests sent and failed until the change was over
    (the replaced pods gone)."""

    mechanism: str
    seconds: float
    restarted: int
    requests: int
    failed: int


def wait_served(
    cluster: Cluster,
    ns: str,
    app: str,
    replicas: int,
    version: str,
    timeout: float,
    replaced: frozenset[str] = frozenset(),
    poll: float = 0.05,
) -> dict[str, PodState]:
    """Poll until exactly ``replicas`` live pods are Ready and each serves ``version``;
    returns them. A pod seen serving it is not asked again (files do not go back). Pods
    whose UID is in ``replaced`` never count: a rolling restart is over when its new pods
    serve, and an old pod may serve the new file too once the kubelet has synced it."""
    served: set[str] = set()
    deadline = time.monotonic() + timeout
    last: dict[str, PodState] = {}
    while time.monotonic() < deadline:
        last = cluster.live_pods(ns, app)
        for pod in last.values():
            if pod.uid in served or pod.uid in replaced or not pod.ready or not pod.ip:
                continue
            try:
                if fetch(f"http://{pod.ip}:8080/", timeout=1.0).strip() == version:
                    served.add(pod.uid)
            except OSError:
                pass
        if len(last) == replicas and all(p.ready and p.uid in served for p in last.values()):
            return last
        time.sleep(poll)
    views = {name: f"ready={p.ready} served={p.uid in served}" for name, p in last.items()}
    raise TimeoutError(f"{app}: not every pod serves {version!r} after {timeout:.0f}s: {views}")


def replaced_containers(before: dict[str, PodState], after: dict[str, PodState]) -> int:
    """Containers of ``before`` that are not running, same container ID, in ``after``
    (a restart in place changes the ID; a replaced pod takes all of its containers)."""
    running = {(p.uid, name, cid) for p in after.values() for name, cid in p.containers.items()}
    return sum(
        (p.uid, name, cid) not in running for p in before.values() for name, cid in p.containers.items()
    )


def measure_edit(
    cluster: Cluster,
    ns: str,
    app: str,
    mechanism: str,
    configmap: str,
    replicas: int,
    version: str,
    load: LoadGenerator,
    timeout: float,
) -> EditResult:
    """Edit ``configmap`` to ``version`` and time it until every pod of ``app`` serves it."""
    before = cluster.live_pods(ns, app)
    sent0, failed0 = load.counts()
    cluster.set_content(ns, configmap, version)
    edited = time.monotonic()
    replaced = frozenset(p.uid for p in before.values()) if mechanism == "reloader" else frozenset()
    after = wait_served(cluster, ns, app, replicas, version, timeout, replaced)
    seconds = time.monotonic() - edited
    # Requests are counted until the change is over, old pods' termination included.
    deadline = time.monotonic() + 120
    while not cluster.settled(ns, app, replicas):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app}: old pods still terminating 120 s after the edit")
        time.sleep(0.2)
    sent, failed = load.counts()
    return EditResult(mechanism, seconds, replaced_containers(before, after), sent - sent0, failed - failed0)
