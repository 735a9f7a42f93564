"""End to end: ConfigRefresh -> real operator -> RabbitMQ -> real sidecars -> real apps
reloaded -> acks -> status. Pods are API objects; sidecars and apps are real processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from opharness import cfr, condition, refresh, wait_for, wait_phase
from refreshbus_support import configs
from refreshbus_support.pods import Owner

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ORDERS = {"app": "orders"}


def routes(body: str) -> dict[str, str]:
    return {"routes.conf": f'location = / {{ return 200 "{body}\\n"; }}\n'}


def orders_deployment(cluster: Any, ns: str) -> None:
    manifest = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "orders", "namespace": ns},
        "spec": {"replicas": 3, "selector": {"matchLabels": ORDERS},
                 "template": {"metadata": {"labels": ORDERS, "annotations": {"refreshbus.io/inject": "true"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.invalid/app"}]}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def config(color: str) -> dict[str, str]:
    return {"config.json": json.dumps({"color": color})}


def test_kubectl_apply_example_refresh_yaml_reloads_every_nginx(cluster, namespace, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", routes("v1"))
    orders_deployment(cluster, namespace)
    members = [fleet.nginx_pod(f"orders-5d8f9c7b6-{i}", labels=ORDERS, owner=Owner.replicaset_of("orders"))
               for i in range(3)]
    for m in members:
        m.sidecar.wait_ready()  # nginx started before its config: it serves 403 until a reload
    masters = [m.app.pid for m in members]
    op = start_operator()
    configs.put_configmap(cluster, namespace, "app-config", routes("v2"))

    cluster.kubectl("-n", namespace, "apply", "-f", str(ROOT / "examples" / "refresh.yaml"))
    obj = wait_phase(cluster, namespace, "refresh-orders", "Succeeded", operator=op)

    assert obj["status"]["counts"]["targets"] == 3
    assert obj["status"]["counts"]["succeeded"] == 3
    assert {r["result"] for r in obj["status"]["results"]} == {"ok"}
    for m, master in zip(members, masters, strict=True):
        # SIGHUP makes nginx start new workers asynchronously: the ack means "signalled",
        # so the old worker may answer for a few milliseconds more.
        assert m.app.wait_for(lambda body: body == "v2\n", timeout=5) == "v2\n"
        assert m.app.pid == master  # reloaded in place, not restarted
    table = cluster.kubectl("-n", namespace, "get", "cfr").stdout
    assert "Succeeded" in table


def test_targeted_refresh_reaches_only_the_named_pods(cluster, namespace, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    members = [fleet.node_pod(f"api-{i}", labels={"app": "api"}) for i in range(3)]
    op = start_operator()
    configs.put_configmap(cluster, namespace, "app-config", config("blue"))
    refresh(cluster, namespace, "canary", {"sources": [{"configMap": {"name": "app-config"}}],
                                           "target": {"pods": ["api-1"]}})
    obj = wait_phase(cluster, namespace, "canary", "Succeeded", operator=op)
    assert obj["status"]["counts"]["targets"] == 1
    assert members[1].node_state()["config"] == {"color": "blue"}
    assert members[1].node_state()["loads"] == 2
    for other in (members[0], members[2]):
        assert other.node_state()["config"] == {"color": "red"}
        assert other.node_state()["loads"] == 1


def test_a_pod_that_fails_to_reload_gives_partially_failed_with_its_reason(
    cluster, namespace, fleet, start_operator
):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    fleet.node_pod("api-0", labels={"app": "api"})
    broken = fleet.node_pod("api-1", labels={"app": "api"}, process_pattern="no-such-process-anywhere")
    op = start_operator()
    configs.put_configmap(cluster, namespace, "app-config", config("blue"))
    refresh(cluster, namespace, "r", {"sources": [{"configMap": {"name": "app-config"}}],
                                      "target": {"destination": "api"}})
    obj = wait_phase(cluster, namespace, "r", "PartiallyFailed", operator=op)
    first = obj["status"]["results"][0]
    assert first["pod"] == broken.name
    assert first["result"] == "failed"
    assert first["reason"]
    assert broken.name in obj["status"]["message"]


def test_deadline_gives_timed_out_naming_the_silent_pod(cluster, namespace, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    fleet.node_pod("api-0", labels={"app": "api"})
    fleet.node_pod("api-1", labels={"app": "api"}, start=False)  # Running in the API, sidecar silent
    op = start_operator()
    refresh(cluster, namespace, "r", {"sources": [{"configMap": {"name": "app-config"}}],
                                      "target": {"selector": {"matchLabels": {"app": "api"}}},
                                      "deadlineSeconds": 4})
    obj = wait_phase(cluster, namespace, "r", "TimedOut", timeout=30, operator=op)
    assert obj["status"]["results"][0]["pod"] == "api-1"
    assert obj["status"]["results"][0]["result"] == "timeout"
    assert "api-1" in obj["status"]["message"]
    assert obj["status"]["counts"]["succeeded"] == 1


def test_broker_restart_mid_refresh_converges(cluster, namespace, running_broker, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    members = [fleet.node_pod(f"api-{i}", labels={"app": "api"}) for i in range(2)]
    op = start_operator()
    configs.put_configmap(cluster, namespace, "app-config", config("blue"))
    running_broker.stop()
    try:
        refresh(cluster, namespace, "r", {"sources": [{"configMap": {"name": "app-config"}}],
                                          "target": {"selector": {"matchLabels": {"app": "api"}}},
                                          "deadlineSeconds": 120})
        wait_for(lambda: condition(cfr(cluster, namespace, "r"), "Published").get("reason")
                 == "BrokerUnavailable", 30, "the operator to report the broker outage")
    finally:
        running_broker.start()
    obj = wait_phase(cluster, namespace, "r", "Succeeded", timeout=90, operator=op)
    assert obj["status"]["counts"]["succeeded"] == 2
    for m in members:
        assert m.node_state()["config"] == {"color": "blue"}


def test_operator_killed_mid_refresh_is_finished_by_the_restarted_one_without_double_signalling(
    cluster, namespace, fleet, start_operator
):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    answering = [fleet.node_pod(f"api-{i}", labels={"app": "api"}) for i in range(2)]
    late = fleet.node_pod("api-late", labels={"app": "api"}, start=False)
    op = start_operator()
    configs.put_configmap(cluster, namespace, "app-config", config("blue"))
    refresh(cluster, namespace, "r", {"sources": [{"configMap": {"name": "app-config"}}],
                                      "target": {"selector": {"matchLabels": {"app": "api"}}},
                                      "deadlineSeconds": 90})
    wait_for(lambda: cfr(cluster, namespace, "r").get("status", {}).get("counts", {}).get("acked") == 2, 30,
             "the two running sidecars' acks")
    op.kill()
    fleet.start(late)  # its sidecar comes up while no operator runs: it catches up on its own
    op2 = start_operator(name="restarted")
    obj = wait_phase(cluster, namespace, "r", "Succeeded", timeout=60, operator=op2)
    assert obj["status"]["counts"]["succeeded"] == 3
    results = {r["pod"]: r["result"] for r in obj["status"]["results"]}
    assert results["api-late"] == "unchanged"  # re-published to it; it already had the content
    for m in answering:
        assert m.node_state()["config"] == {"color": "blue"}
        assert m.node_state()["loads"] == 2  # start + exactly one reload: never signalled twice
    assert late.node_state()["loads"] == 1


def test_auto_refresh_after_kubectl_edit_configmap(cluster, namespace, fleet, start_operator, tmp_path):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    labels = {"app": "web"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels, "annotations": {
                     "refreshbus.io/inject": "true", "refreshbus.io/auto-refresh": "true",
                     "refreshbus.io/configmaps": "app-config"}},
                     "spec": {"containers": [{"name": "app", "image": "registry.invalid/app"}]}}}}))
    members = [fleet.node_pod(f"web-5d8f9c7b6-{i}", labels=labels, owner=Owner.replicaset_of("web"))
               for i in range(2)]
    op = start_operator(env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0.5"})
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "the ConfigMap watch")

    # `kubectl edit`, with an editor that changes red to blue and saves
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/red/blue/' \"$1\"\n")
    editor.chmod(0o755)
    subprocess.run([str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace,
                    "edit", "configmap", "app-config"], env={**os.environ, "KUBE_EDITOR": str(editor)},
                   check=True, capture_output=True, timeout=30)

    def auto_done() -> dict[str, Any] | None:
        items = cluster.get_json("-n", namespace, "cfr", "-l", "refreshbus.io/auto-refresh-for=web")["items"]
        return next((i for i in items if i.get("status", {}).get("phase") == "Succeeded"), None)

    obj = wait_for(auto_done, 30, "the auto-created ConfigRefresh to succeed")
    assert obj["status"]["counts"]["succeeded"] == 2
    for m in members:
        assert m.node_state()["config"] == {"color": "blue"}
