"""The product end to end in real pods (issue 6, suite steps 1-6; issue 11 §2).

``helm install`` the chart with its DEFAULT values -- only the images are the locally built
ones -- so the broker is the chart's embedded RabbitMQ StatefulSet (image from Debian's
rabbitmq-server, data on a PersistentVolumeClaim of the default StorageClass) and the
sidecars reach it by its Service's DNS name through CoreDNS. Unmodified apps in three
runtimes (nginx/C, Node.js, Go) opted in by annotations only; edit ConfigMaps and apply
ConfigRefresh objects; break things (the broker pod deleted mid-refresh, the active operator
killed, a pod recreated). Every check looks at what the apps actually serve (HTTP to the
pod IPs from the host), at the pods' container IDs and restart counts, and at
``kubectl get cfr``.

The release is the session's (conftest.py ``release``). Upgrading from the previous release,
uninstalling, and the existing-broker mode (``broker.existingSecret``) are
test_release_lifecycle.py, which runs last.

Tests run in file order and share one release and one namespace of workloads.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from refreshbus_support.nodekit import (
    BROKER,
    RELEASE,
    RELEASE_NS,
    broker_state,
    get_cfr_table,
    http_get,
    http_post,
    json_config,
    pods,
    refresh,
    served_version,
    set_config,
    wait_cfr,
    wait_for,
)
from refreshbus_testenv.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).parent / "manifests"
EXISTING = os.environ.get("REFRESHBUS_EXISTING_CLUSTER") == "1"
#: Step 3's promise: every pod serves the new config this soon after the ConfigMap edit.
AUTO_REFRESH_DEADLINE = 2.0


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(cluster: ControlPlane, release: str) -> Iterator[str]:
    """Step 2: a namespace with the annotated workloads, all replicas ready."""
    ns = f"demo-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(
        lambda: cluster.kubectl("-n", ns, "get", "sa", "default", check=False).returncode == 0,
        30,
        "default ServiceAccount",
    )
    for manifest in ("apps.yaml", "targets.yaml"):
        cluster.kubectl("-n", ns, "apply", "-f", str(MANIFESTS / manifest))
    for deploy in ("web-nginx", "web-node", "web-go", "orders", "billing"):
        cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{deploy}", "--timeout=180s", timeout=200)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# -- step 1 ----------------------------------------------------------------------------------


def test_helm_install_runs_operator_replicas_and_registers_the_webhook(
    cluster: ControlPlane, release: str
) -> None:
    ready = cluster.get_json("-n", release, "deployment", "refreshbus-operator")["status"].get(
        "readyReplicas"
    )
    assert ready == 2
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/configrefreshes.refreshbus.io", "--timeout=30s"
    )
    hooks = cluster.get_json("mutatingwebhookconfigurations")["items"]
    bundles = [w["clientConfig"].get("caBundle") for h in hooks for w in h["webhooks"]]
    assert bundles, "no MutatingWebhookConfiguration"
    wait_for(
        lambda: (
            all(bundles)
            or all(
                w["clientConfig"].get("caBundle")
                for h in cluster.get_json("mutatingwebhookconfigurations")["items"]
                for w in h["webhooks"]
            )
        ),
        30,
        "the operator to patch the webhook's caBundle",
    )


# -- step 2 ----------------------------------------------------------------------------------


def test_annotated_workloads_get_a_sidecar_and_serve_their_initial_config(
    cluster: ControlPlane, demo: str
) -> None:
    web = pods(cluster, demo, "tier=web")
    assert len(web) == 6
    for pod in web:
        assert "refreshbus-sidecar" in pod.container_ids, f"{pod.name} was not injected"
        expected = {"web-nginx": "nginx v1", "web-node": "1", "web-go": "1"}[pod.app]
        assert served_version(pod.ip) == expected, pod.name
    spec = cluster.get_json("-n", demo, "pod", pods(cluster, demo, "app=web-nginx")[0].name)["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "refreshbus-sidecar")
    assert sidecar.get("restartPolicy") == "Always", "expected a native sidecar"
    assert spec.get("shareProcessNamespace") is True
    # The app's own mount path is kept; only the volume behind it changed.
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/etc/demo/config"]["name"] != "config"


def test_sidecars_reach_the_embedded_broker_by_its_service_name(cluster: ControlPlane, demo: str) -> None:
    """The sidecars' broker URL names the embedded broker's Service (resolved by CoreDNS in
    each pod), and every injected pod's sidecar holds a connection to the broker pod."""
    copies = cluster.get_json(
        "-n", demo, "secret", "-l", "app.kubernetes.io/managed-by=refreshbus-operator"
    )["items"]
    urls = [base64.b64decode(c["data"]["urls"]).decode() for c in copies]
    assert len(urls) == 1, urls
    assert urlsplit(urls[0]).hostname == f"{RELEASE}-rabbitmq.{RELEASE_NS}.svc", "not the Service name"
    injected = [p for p in pods(cluster, demo, "app") if "refreshbus-sidecar" in p.container_ids]
    assert len(injected) == 11

    def sidecar_connections() -> int:
        out = cluster.kubectl("-n", RELEASE_NS, "exec", f"{RELEASE}-rabbitmq-0", "--",
                              "rabbitmqctl", "-q", "list_connections", "user").stdout  # fmt: skip
        return out.split().count("refreshbus-sidecar")

    wait_for(lambda: sidecar_connections() >= len(injected), 60, "a broker connection per sidecar")


# -- step 3 ----------------------------------------------------------------------------------


def test_configmap_edit_reloads_every_auto_refresh_pod_in_place_within_2s(
    cluster: ControlPlane, demo: str, node_cluster: Any
) -> None:
    before = {p.name: p for p in pods(cluster, demo, "tier=web")}
    pids_before = {p.name: json.loads(http_get(p.ip))["pid"] for p in before.values() if p.app != "web-nginx"}
    nginx_master = {
        p.name: cluster.kubectl(
            "-n", demo, "exec", p.name, "-c", "nginx", "--", "cat", "/tmp/nginx.pid"
        ).stdout
        for p in before.values()
        if p.app == "web-nginx"
    }
    started = time.monotonic()
    set_config(cluster, demo, "nginx-config", "greeting.conf", 'set $greeting "nginx v2";\n')
    set_config(cluster, demo, "node-config", "config.json", json_config("node", "2"))
    set_config(cluster, demo, "go-config", "config.json", json_config("go", "2"))
    set_config(cluster, demo, "go-config", "banner.txt", "go banner v2")
    edited = time.monotonic()
    expected = {"web-nginx": "nginx v2", "web-node": "2", "web-go": "2"}
    served_at: dict[str, float] = {}
    while len(served_at) < len(before) and time.monotonic() - started < 30:
        for pod in before.values():
            if pod.name not in served_at:
                try:
                    if served_version(pod.ip) == expected[pod.app]:
                        served_at[pod.name] = time.monotonic() - edited
                except OSError:
                    pass
        time.sleep(0.02)
    latencies = {k: round(v, 2) for k, v in sorted(served_at.items())}
    node_cluster.timings["auto-refresh-max"] = max(served_at.values(), default=-1)
    print(f"\n[e2e-node] ConfigMap edit -> served, per pod (s): {latencies}")
    assert set(served_at) == set(before), f"not refreshed: {set(before) - set(served_at)}"
    assert max(served_at.values()) <= AUTO_REFRESH_DEADLINE, latencies

    after = {p.name: p for p in pods(cluster, demo, "tier=web")}
    assert set(after) == set(before), "pods were replaced"
    for name, pod in after.items():
        assert pod.restarts == 0, name
        assert pod.container_ids == before[name].container_ids, f"{name} containers changed"
    for name, pid in pids_before.items():
        assert json.loads(http_get(after[name].ip))["pid"] == pid, f"{name}: app process changed"
    for name, pid in nginx_master.items():
        now = cluster.kubectl("-n", demo, "exec", name, "-c", "nginx", "--", "cat", "/tmp/nginx.pid").stdout
        assert now == pid, f"{name}: nginx master changed"

    # Auto-created ConfigRefreshes, every one Succeeded with its workload's 2 pods: one per
    # workload, or two for go-config, whose second edit lands in the window the first one
    # opened (docs/operator.md, auto-refresh).
    def auto_done() -> list[dict[str, Any]] | None:
        items = cluster.get_json("-n", demo, "configrefresh")["items"]
        sources = {i["spec"]["sources"][0]["configMap"]["name"] for i in items}
        done = all((i.get("status") or {}).get("phase") == "Succeeded" for i in items)
        return items if done and sources == {"nginx-config", "node-config", "go-config"} else None

    items = wait_for(auto_done, 30, "Succeeded auto-refreshes of the three workloads")
    assert len(items) <= 4, [i["spec"]["sources"] for i in items]
    for item in items:
        assert item["status"]["counts"]["targets"] == 2
        assert item["status"]["counts"]["succeeded"] == 2


def test_subpath_file_mount_serves_the_new_content_after_a_configmap_edit(
    cluster: ControlPlane, demo: str
) -> None:
    """docs/injection.md "subPath file mounts": the app's subPath file mount is the
    sidecar's in-place copy of the key, rewritten in its own inode, so the bind-mounted
    file serves what step 3's edit wrote -- in the same containers, never restarted."""
    for view in pods(cluster, demo, "app=web-go"):
        spec = cluster.get_json("-n", demo, "pod", view.name)["spec"]
        mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["/etc/demo/banner.txt"]["subPath"] == ".inplace/configmap-go-config/banner.txt"

        def cat(path: str, pod: str = view.name) -> str:
            return cluster.kubectl("-n", demo, "exec", pod, "-c", "go", "--", "cat", path).stdout

        wait_for(lambda cat=cat: cat("/etc/demo/banner.txt") == "go banner v2", 10, "the new banner")
        assert cat("/etc/demo/config/banner.txt") == "go banner v2"
        assert view.restarts == 0


def _sidecar_restarts(cluster: ControlPlane, ns: str, pod: str) -> int:
    statuses = cluster.get_json("-n", ns, "pod", pod)["status"].get("initContainerStatuses", [])
    return next(s.get("restartCount", 0) for s in statuses if s["name"] == "refreshbus-sidecar")


KILL_SIDECAR = (
    "import os, signal\n"
    "for pid in os.listdir('/proc'):\n"
    "    if pid.isdigit() and int(pid) != os.getpid():\n"
    "        try: cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
    "        except OSError: continue\n"
    "        if b'refreshbus-sidecar' in cmd: os.kill(int(pid), signal.SIGTERM)\n"
)


def test_a_restarted_sidecar_that_finds_the_current_config_neither_writes_nor_reloads(
    cluster: ControlPlane, demo: str
) -> None:
    """A sidecar container restart keeps the emptyDir: its start-up and connect syncs find
    the current content on disk and must not reload the app once more (signal: web-go,
    with its in-place subPath file; HTTP: web-node)."""
    targets = [pods(cluster, demo, "app=web-go")[0], pods(cluster, demo, "app=web-node")[0]]
    loads = {p.name: json.loads(http_get(p.ip))["loads"] for p in targets}
    restarts = {p.name: _sidecar_restarts(cluster, demo, p.name) for p in targets}
    for p in targets:
        cluster.kubectl("-n", demo, "exec", p.name, "-c", "refreshbus-sidecar", "--",
                        "python3", "-c", KILL_SIDECAR)
    for p in targets:
        wait_for(lambda p=p: _sidecar_restarts(cluster, demo, p.name) > restarts[p.name], 60,
                 f"{p.name}'s sidecar to restart")
        wait_for(lambda p=p: "initial config written" in cluster.kubectl(
            "-n", demo, "logs", p.name, "-c", "refreshbus-sidecar").stdout, 30, f"{p.name}'s sidecar ready")
    time.sleep(3)  # the connect sync, and an auto-refresh nudge if there were one

    for p in targets:
        log = cluster.kubectl("-n", demo, "logs", p.name, "-c", "refreshbus-sidecar").stdout
        msgs = [json.loads(line)["msg"] for line in log.splitlines() if line.startswith("{")]
        assert "initial config written" in msgs
        assert not [m for m in msgs if m.startswith(("wrote ", "reloaded"))], f"{p.name}: {msgs}"
        assert json.loads(http_get(p.ip))["loads"] == loads[p.name], f"{p.name} was reloaded again"


# -- step 4 ----------------------------------------------------------------------------------


def _versions(cluster: ControlPlane, ns: str, selector: str) -> dict[str, str]:
    return {p.name: served_version(p.ip) for p in pods(cluster, ns, selector)}


def test_targeted_refreshes_change_only_their_targets(cluster: ControlPlane, demo: str) -> None:
    orders = [p.name for p in pods(cluster, demo, "app=orders")]
    billing = [p.name for p in pods(cluster, demo, "app=billing")]
    assert len(orders) == 3
    assert len(billing) == 2

    # No auto-refresh here: editing the ConfigMap alone changes nothing in the pods.
    set_config(cluster, demo, "orders-config", "config.json", json_config("orders", "v2"))
    time.sleep(2)
    assert set(_versions(cluster, demo, "app=orders").values()) == {"v1"}

    # One pod.
    name = refresh(cluster, demo, "orders-config", {"pods": [orders[0]]})
    status = wait_cfr(cluster, demo, name)
    assert status["phase"] == "Succeeded", status
    assert (status["counts"]["targets"], status["counts"]["succeeded"]) == (1, 1)
    assert _versions(cluster, demo, "app=orders") == {orders[0]: "v2", orders[1]: "v1", orders[2]: "v1"}
    table = get_cfr_table(cluster, demo, name)
    assert (table["PHASE"], table["TARGETS"], table["SUCCEEDED"], table["FAILED"]) == (
        "Succeeded",
        "1",
        "1",
        "0",
    )

    # One workload (the pod that already has v2 answers "unchanged", which counts as success).
    name = refresh(cluster, demo, "orders-config", {"workload": {"kind": "Deployment", "name": "orders"}})
    status = wait_cfr(cluster, demo, name)
    assert status["phase"] == "Succeeded", status
    assert (status["counts"]["targets"], status["counts"]["succeeded"]) == (3, 3)
    assert set(_versions(cluster, demo, "app=orders").values()) == {"v2"}
    assert set(_versions(cluster, demo, "app=billing").values()) == {"v1"}

    # A label selector: billing only.
    set_config(cluster, demo, "billing-config", "config.json", json_config("billing", "v2"))
    name = refresh(cluster, demo, "billing-config", {"selector": {"matchLabels": {"team": "pay"}}})
    status = wait_cfr(cluster, demo, name)
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["targets"] == 2
    assert set(_versions(cluster, demo, "app=billing").values()) == {"v2"}
    assert set(_versions(cluster, demo, "app=orders").values()) == {"v2"}

    # A Spring-style destination naming one instance: <app>:<pod>.
    set_config(cluster, demo, "orders-config", "config.json", json_config("orders", "v3"))
    name = refresh(cluster, demo, "orders-config", {"destination": f"orders:{orders[2]}"})
    status = wait_cfr(cluster, demo, name)
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["targets"] == 1
    assert _versions(cluster, demo, "app=orders") == {orders[0]: "v2", orders[1]: "v2", orders[2]: "v3"}

    # ... and every instance of the app: orders:**.
    name = refresh(cluster, demo, "orders-config", {"destination": "orders:**"})
    status = wait_cfr(cluster, demo, name)
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["targets"] == 3
    assert set(_versions(cluster, demo, "app=orders").values()) == {"v3"}


# -- step 5 ----------------------------------------------------------------------------------


def test_a_reload_failing_in_one_pod_gives_partially_failed_naming_it(
    cluster: ControlPlane, demo: str
) -> None:
    orders = pods(cluster, demo, "app=orders")
    broken = orders[1]
    http_post(broken.ip, "/-/fail-reloads")
    set_config(cluster, demo, "orders-config", "config.json", json_config("orders", "v4"))
    name = refresh(cluster, demo, "orders-config", {"workload": {"kind": "Deployment", "name": "orders"}})
    status = wait_cfr(cluster, demo, name)
    assert status["phase"] == "PartiallyFailed", status
    assert (status["counts"]["succeeded"], status["counts"]["failed"]) == (2, 1)
    first = status["results"][0]
    assert first["pod"] == broken.name
    assert first["result"] == "failed"
    assert "500" in first.get("reason", ""), first
    assert broken.name in status.get("message", "")
    # The failed pod keeps serving (its old config); the others have the new one.
    versions = _versions(cluster, demo, "app=orders")
    assert versions[broken.name] == "v3"
    assert {v for k, v in versions.items() if k != broken.name} == {"v4"}
    # Take the broken pod out, so later tests start from healthy replicas.
    cluster.kubectl("-n", demo, "delete", "pod", broken.name, "--wait=true", timeout=90)
    cluster.kubectl("-n", demo, "rollout", "status", "deployment/orders", "--timeout=120s", timeout=130)


@pytest.mark.timeout(600)
def test_broker_pod_deleted_mid_refresh_comes_back_with_its_volume_and_the_round_finishes(
    cluster: ControlPlane, demo: str, node_cluster: Any
) -> None:
    """The embedded broker's pod is deleted while a round is in flight: the StatefulSet
    recreates it on the same PersistentVolumeClaim, sidecars and operator reconnect (by the
    Service name), every target converges and the round ends Succeeded."""
    before = broker_state(cluster)
    set_config(cluster, demo, "billing-config", "config.json", json_config("billing", "v3"))
    target = {"workload": {"kind": "Deployment", "name": "billing"}}
    cluster.kubectl("-n", RELEASE_NS, "delete", "pod", "-l", BROKER, "--wait=false")
    started = time.monotonic()
    name = refresh(cluster, demo, "billing-config", target, deadline=180)
    status = wait_cfr(cluster, demo, name, timeout=180)
    node_cluster.timings["broker-pod-deleted-round"] = time.monotonic() - started
    assert status["phase"] == "Succeeded", status
    assert set(_versions(cluster, demo, "app=billing").values()) == {"v3"}
    after = broker_state(cluster)
    assert after["pod-uid"] != before["pod-uid"], "the broker pod was not replaced"
    assert after["volume"] == before["volume"], "the broker came back on another volume"
    # Everyone is back on the new broker: a round for every orders pod works too.
    set_config(cluster, demo, "orders-config", "config.json", json_config("orders", "after-broker"))
    name = refresh(cluster, demo, "orders-config", {"workload": {"kind": "Deployment", "name": "orders"}})
    assert wait_cfr(cluster, demo, name)["phase"] == "Succeeded"


def _active_operator(cluster: ControlPlane) -> str:
    """The operator pod that holds kopf's peering priority (the active replica)."""
    peerings = cluster.get_json("clusterkopfpeerings")["items"]
    peers: dict[str, Any] = {}
    for peering in peerings:
        peers.update(peering.get("status") or {})
    names = {p.name for p in pods(cluster, RELEASE_NS, "app.kubernetes.io/component=operator")}
    best = max(peers.items(), key=lambda kv: kv[1].get("priority", 0))
    for name in names:
        if name in best[0] or name in json.dumps(best[1]):
            return name
    raise AssertionError(f"cannot tell the active operator from {peers} among {names}")


def test_killing_the_active_operator_mid_refresh_lets_the_other_replica_finish(
    cluster: ControlPlane, demo: str
) -> None:
    active = _active_operator(cluster)
    set_config(cluster, demo, "billing-config", "config.json", json_config("billing", "v4"))
    name = refresh(
        cluster, demo, "billing-config", {"workload": {"kind": "Deployment", "name": "billing"}}, deadline=120
    )
    cluster.kubectl("-n", RELEASE_NS, "delete", "pod", active, "--grace-period=0", "--force", check=False)
    status = wait_cfr(cluster, demo, name, timeout=120)
    assert status["phase"] == "Succeeded", status
    assert set(_versions(cluster, demo, "app=billing").values()) == {"v4"}
    cluster.kubectl(
        "-n", RELEASE_NS, "rollout", "status", "deployment/refreshbus-operator", "--timeout=120s", timeout=130
    )


def test_a_pod_recreated_mid_refresh_starts_with_the_current_config(cluster: ControlPlane, demo: str) -> None:
    victim = pods(cluster, demo, "app=orders")[0]
    set_config(cluster, demo, "orders-config", "config.json", json_config("orders", "v5"))
    name = refresh(cluster, demo, "orders-config", {"workload": {"kind": "Deployment", "name": "orders"}})
    cluster.kubectl("-n", demo, "delete", "pod", victim.name, "--wait=false")
    wait_cfr(cluster, demo, name, timeout=90)  # the deleted pod may count as failed/timed out
    cluster.kubectl("-n", demo, "rollout", "status", "deployment/orders", "--timeout=120s", timeout=130)

    def all_new() -> bool:
        current = pods(cluster, demo, "app=orders")
        return (
            len(current) == 3
            and victim.name not in {p.name for p in current}
            and all(served_version(p.ip) == "v5" for p in current)
        )

    wait_for(all_new, 60, "every orders pod, the new one included, to serve v5")


# -- step 6 ----------------------------------------------------------------------------------

PROBE = """
import json, os, ssl, sys, urllib.request, urllib.error
host = os.environ["KUBERNETES_SERVICE_HOST"]; port = os.environ["KUBERNETES_SERVICE_PORT"]
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
out = {}
for name, path in json.loads(sys.argv[1]).items():
    req = urllib.request.Request(f"https://{host}:{port}{path}", headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            out[name] = resp.status
    except urllib.error.HTTPError as exc:
        out[name] = exc.code
print(json.dumps(out))
"""


def test_a_sidecar_cannot_read_another_secret_checked_from_inside_its_pod(
    cluster: ControlPlane, demo: str
) -> None:
    """Real requests with the sidecar container's own token, from inside the pod: it may GET
    the ConfigMap its workload manages and nothing else (orders has its own ServiceAccount)."""
    pod = pods(cluster, demo, "app=orders")[0].name
    paths = {
        "own-configmap": f"/api/v1/namespaces/{demo}/configmaps/orders-config",
        "other-configmap": f"/api/v1/namespaces/{demo}/configmaps/billing-config",
        "other-secret": f"/api/v1/namespaces/{demo}/secrets/unrelated-secret",
        "list-secrets": f"/api/v1/namespaces/{demo}/secrets",
        "other-namespace": f"/api/v1/namespaces/{RELEASE_NS}/secrets/rb-broker",
    }
    out = cluster.kubectl(
        "-n", demo, "exec", pod, "-c", "refreshbus-sidecar", "--", "python3", "-c", PROBE, json.dumps(paths)
    ).stdout
    codes = json.loads(out.strip().splitlines()[-1])
    assert codes["own-configmap"] == 200, codes
    assert codes["other-secret"] == 403, codes
    assert codes["list-secrets"] == 403, codes
    assert codes["other-namespace"] == 403, codes
    assert codes["other-configmap"] == 403, codes
