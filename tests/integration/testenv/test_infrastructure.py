"""The test infrastructure itself is real: RBAC is enforced, admission webhooks are
wired in, and a broker restart keeps durable queues and persistent messages, as the
fault tests of the sidecar and operator assume."""

from __future__ import annotations

import json

import pika
import pytest
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def test_api_server_enforces_rbac_for_service_accounts(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "db", "--from-literal=password=x")
    as_sa = f"--as=system:serviceaccount:{namespace}:default"

    denied = cluster.kubectl("-n", namespace, "get", "secret", "db", as_sa, check=False)

    assert denied.returncode != 0
    assert "forbidden" in denied.stderr


def test_api_server_issues_service_account_tokens(cluster: ControlPlane, namespace: str) -> None:
    token = cluster.kubectl("-n", namespace, "create", "token", "default").stdout.strip()

    as_token = cluster.kubeconfig_for_token(token, f"{namespace}-default")
    review = cluster.kubectl("auth", "whoami", "-o", "json", f"--kubeconfig={as_token}", check=False)

    assert review.returncode == 0, review.stderr
    assert json.loads(review.stdout)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:default")


def test_api_server_runs_the_admission_webhook_plugins(cluster: ControlPlane) -> None:
    # A webhook configuration pointing nowhere, failurePolicy Fail, scoped to one label:
    # if the plugin is active, a matching object is rejected by the API server.
    manifest = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "refreshbus-harness-probe"},
        "webhooks": [{
            "name": "probe.refreshbus.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 2,
            "clientConfig": {"url": "https://127.0.0.1:1/nowhere"},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["configmaps"]}],
            "objectSelector": {"matchLabels": {"refreshbus-harness-probe": "yes"}},
        }],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    try:
        created = cluster.kubectl("create", "configmap", "probe", "-n", "default", "--dry-run=server",
                                  "-o", "yaml", check=False)
        labelled = cluster.kubectl("apply", "--dry-run=server", "-f", "-", check=False, input=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "probe", "namespace": "default",
                         "labels": {"refreshbus-harness-probe": "yes"}}}))
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", "refreshbus-harness-probe")

    assert created.returncode == 0, created.stderr
    assert labelled.returncode != 0
    assert "probe.refreshbus.io" in labelled.stderr


def test_broker_restart_keeps_durable_queues_and_persistent_messages(running_broker: Broker) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(running_broker.url()))
    ch = conn.channel()
    ch.queue_declare("harness.durable", durable=True)
    ch.basic_publish("", "harness.durable", b"kept", pika.BasicProperties(delivery_mode=2))
    conn.close()

    running_broker.restart()

    conn = pika.BlockingConnection(pika.URLParameters(running_broker.url()))
    try:
        _method, _props, body = conn.channel().basic_get("harness.durable", auto_ack=True)
    finally:
        conn.close()
    assert body == b"kept"


def test_broker_users_for_operator_and_sidecar_can_log_in(running_broker: Broker) -> None:
    for user in ("refreshbus-operator", "refreshbus-sidecar"):
        conn = pika.BlockingConnection(pika.URLParameters(running_broker.url(user)))
        assert conn.is_open
        conn.close()
