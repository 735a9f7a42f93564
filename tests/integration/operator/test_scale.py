"""1,000 targets: one workload message, 1,000 acks folded into a handful of status PATCHes,
results bounded failures-first, a small object. Real operator, API server and broker; the
acks come from one test-side peer answering for every pod (the real protocol)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes
import pika
import pytest
from opharness import configmap, deployment, refresh, wait_phase
from refreshbus_wire import Ack, AckResult, RefreshEvent, decode, encode, new_id, now, routing
from refreshbus_wire.events import ACK_TOKEN_AUDIENCE

pytestmark = pytest.mark.integration

N = 1000
FAILING = {i for i in range(N) if i % 100 == 7}


def make_pods(cluster: Any, ns: str) -> dict[str, str]:
    """The N pods; returns each one's identity token for its acks (pod name -> token)."""
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=cluster.kubeconfig, client_configuration=config)
    config.connection_pool_maxsize = 32
    api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))
    env = [{"name": "REFRESHBUS_WORKLOAD_KIND", "value": "Deployment"},
           {"name": "REFRESHBUS_WORKLOAD_NAME", "value": "big"}]

    def one(i: int) -> tuple[str, str]:
        name = f"big-5d8f9c7b6-{i:04d}"
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "big"},
                             "annotations": {"refreshbus.io/configmaps": "app-config"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app"}],
                         "initContainers": [{"name": "refreshbus-sidecar", "restartPolicy": "Always",
                                             "image": "registry.invalid/sidecar", "env": env}]}}
        uid = api.create_namespaced_pod(ns, body).metadata.uid
        api.patch_namespaced_pod_status(name, ns, {"status": {"phase": "Running"}})
        # What the kubelet projects into the pod for the ack audience.
        request = {"spec": {"audiences": [ACK_TOKEN_AUDIENCE], "expirationSeconds": 3600,
                            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid}}}
        token = api.create_namespaced_service_account_token("default", ns, request).status.token
        return name, token

    with ThreadPoolExecutor(32) as pool:
        return dict(pool.map(one, range(N)))


class BulkAcker:
    """Receives the workload message and answers for all N pods."""

    def __init__(self, url: str, ns: str, tokens: dict[str, str]) -> None:
        self.ns = ns
        self.tokens = tokens
        self.events: list[RefreshEvent] = []
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = self.conn.channel()
        ch.exchange_declare(routing.EXCHANGE, exchange_type=routing.EXCHANGE_TYPE, durable=True)
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, routing.EXCHANGE, routing_key=routing.workload_key(ns, "Deployment", "big"))
        ch.basic_consume(queue, self._on_event, auto_ack=True)
        self.ch = ch
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.conn.process_data_events(time_limit=0.05)
        self.conn.close()

    def _on_event(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        event = decode(body)
        assert isinstance(event, RefreshEvent)
        self.events.append(event)
        for i in range(N):
            pod = f"big-5d8f9c7b6-{i:04d}"
            failed = i in FAILING
            ack = Ack(id=new_id(), event_id=event.id, namespace=self.ns, pod=pod,
                      result=AckResult.FAILED if failed else AckResult.OK, received_at=now(),
                      error="reload endpoint returned 500" if failed else None,
                      identity_token=self.tokens[pod])
            ch.basic_publish(routing.EXCHANGE, routing.ack_key(self.ns, pod), encode(ack))


def test_a_thousand_targets(cluster, namespace, running_broker, start_operator):
    configmap(cluster, namespace, "app-config", {"k": "v"})
    deployment(cluster, namespace, "big", {"app": "big"})
    tokens = make_pods(cluster, namespace)
    acker = BulkAcker(running_broker.url("refreshbus-sidecar"), namespace, tokens)
    try:
        op = start_operator()
        refresh(cluster, namespace, "big", {"sources": [{"configMap": {"name": "app-config"}}],
                                            "target": {"workload": {"kind": "Deployment", "name": "big"}}})
        obj = wait_phase(cluster, namespace, "big", "PartiallyFailed", timeout=90, operator=op)
    finally:
        acker.stop.set()
        acker.thread.join(5)
    status = obj["status"]
    assert status["counts"]["targets"] == N
    assert status["counts"]["failed"] == len(FAILING)
    assert status["counts"]["succeeded"] == N - len(FAILING)
    assert len(status["results"]) == 100
    assert status["resultsTruncated"] == N - 100
    assert [r["result"] for r in status["results"][: len(FAILING)]] == ["failed"] * len(FAILING)
    assert len(acker.events) == 1  # one message under the workload key reached everyone
    size = len(json.dumps(obj))
    assert size < 64 * 1024, size  # small object: results bounded, round annotation compressed
    metrics = op.metrics()
    patches = metrics["refreshbus_operator_status_patches_total"]
    reviews = metrics.get('refreshbus_operator_token_reviews_total{result="answered"}', 0)
    took = obj["status"]["completionTime"], obj["status"]["startTime"]
    print(f"1,000 targets: {patches:.0f} status PATCHes, {reviews:.0f} TokenReviews, object {size} bytes, "
          f"start {took[1]} -> complete {took[0]}")
    assert metrics['refreshbus_operator_ack_identity_checks_total{result="verified"}'] == N
    # Each pod's token verified against the issuer's keys (the round resolved its uid): no
    # TokenReview at all, where there was one per pod.
    assert reviews == 0
    assert patches <= 15, patches  # 1,000 acks, a handful of PATCHes
