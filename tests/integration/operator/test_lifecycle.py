"""The ConfigRefresh lifecycle through the real operator process, the real API server and
the real RabbitMQ. The sidecars are fakes that speak the real protocol on the real broker
(tests/e2e runs the real sidecar processes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opharness import (
    ORDERS,
    always,
    cfr,
    condition,
    configmap,
    deployment,
    events_for,
    orders_pods,
    publish_raw,
    refresh,
    silent,
    wait_for,
    wait_phase,
)
from refreshbus_support.pods import create_pod
from refreshbus_wire import Ack, AckResult, encode, new_id, now
from refreshbus_wire.routing import ack_key

pytestmark = pytest.mark.integration

WORKLOAD = {"workload": {"kind": "Deployment", "name": "orders"}}
SELECTOR = {"selector": {"matchLabels": ORDERS}}


def spec(target: dict[str, Any], source: str = "app-config", **extra: Any) -> dict[str, Any]:
    """A ConfigRefresh spec with one ConfigMap source, ``target`` and any other fields."""
    return {"sources": [{"configMap": {"name": source}}], "target": target, **extra}


def orders_deployment_pods(
    cluster: Any,
    ns: str,
    n: int,
    fake_sidecars: Any,
    behaviours: dict[int, Any] | None = None,
    configmaps: tuple[str, ...] = ("app-config",),
) -> list[Any]:
    """Deployment ``orders`` with ``n`` running, opted-in pods and a fake sidecar for each."""
    deployment(cluster, ns, "orders", ORDERS)
    return orders_pods(cluster, ns, n, fake_sidecars, behaviours, configmaps)


def test_workload_refresh_succeeds_with_one_workload_message(
    cluster, namespace, start_operator, fake_sidecars
):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    fakes = orders_deployment_pods(cluster, namespace, 3, fake_sidecars)
    op = start_operator()
    refresh(cluster, namespace, "r1", spec(WORKLOAD))
    obj = wait_phase(cluster, namespace, "r1", "Succeeded", operator=op)
    status = obj["status"]
    assert status["counts"] == {
        "targets": 3,
        "acked": 3,
        "succeeded": 3,
        "unchanged": 0,
        "failed": 0,
        "pending": 0,
        "skipped": 0,
    }
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert not obj["metadata"].get("finalizers")  # deleting it needs no clean-up: no finalizer
    assert {r["pod"] for r in status["results"]} == {f.pod for f in fakes}
    assert all(r["result"] == "ok" and r["configHash"] == "sha256:fake" for r in status["results"])
    assert status["startTime"]
    assert status["completionTime"]
    for ctype in ("TargetsResolved", "SourcesReady", "Published", "Complete"):
        assert condition(obj, ctype)["status"] == "True", ctype
    assert condition(obj, "Complete")["reason"] == "Succeeded"
    # Every sidecar got exactly one message: published once under the workload key.
    for fake in fakes:
        events = fake.deliveries()
        assert [e.id for e in events] == [status["eventId"]]
        assert events[0].target.scope.value == "workload"
        assert events[0].sources[0].name == "app-config"
        assert events[0].sources[0].resource_version
    reasons = [e["reason"] for e in events_for(cluster, namespace, "r1")]
    assert "Started" in reasons
    assert "Succeeded" in reasons


def test_source_keys_are_carried_into_the_published_event(
    cluster, namespace, start_operator, fake_sidecars
):
    """spec.sources[].keys reach the wire: every sidecar's event names those keys (and a
    source without keys carries none: every key counts)."""
    configmap(cluster, namespace, "app-config", {"application.yaml": "a: 1", "logback.xml": "<x/>"})
    configmap(cluster, namespace, "extra", {"b": "2"})
    fakes = orders_deployment_pods(cluster, namespace, 2, fake_sidecars, configmaps=("app-config", "extra"))
    op = start_operator()
    refresh(
        cluster,
        namespace,
        "keyed",
        {
            "sources": [
                {"configMap": {"name": "app-config", "keys": ["application.yaml", "logback.xml"]}},
                {"configMap": {"name": "extra"}},
            ],
            "target": WORKLOAD,
        },
    )
    obj = wait_phase(cluster, namespace, "keyed", "Succeeded", operator=op)
    for fake in fakes:
        (event,) = fake.deliveries(obj["status"]["eventId"])
        assert [(s.name, s.keys) for s in event.sources] == [
            ("app-config", ("application.yaml", "logback.xml")),
            ("extra", None),
        ]


def test_pods_target_reaches_only_the_named_pods(cluster, namespace, start_operator, fake_sidecars):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    fakes = orders_deployment_pods(cluster, namespace, 3, fake_sidecars)
    op = start_operator()
    refresh(cluster, namespace, "only-one", spec({"pods": [fakes[1].pod, "does-not-exist"]}))
    obj = wait_phase(cluster, namespace, "only-one", "Succeeded", operator=op)
    assert obj["status"]["counts"]["targets"] == 1
    assert obj["status"]["skipped"] == [{"pod": "does-not-exist", "reason": "pod not found"}]
    assert len(fakes[1].deliveries()) == 1
    assert fakes[1].deliveries()[0].target.scope.value == "pod"
    assert fakes[0].deliveries() == []
    assert fakes[2].deliveries() == []


def test_one_failure_gives_partially_failed_with_the_reason(
    cluster, namespace, start_operator, fake_sidecars
):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    orders_deployment_pods(
        cluster,
        namespace,
        3,
        fake_sidecars,
        {2: always("failed", "reload endpoint returned 500"), 1: always("unchanged")},
    )
    op = start_operator()
    refresh(cluster, namespace, "r", spec(SELECTOR))
    obj = wait_phase(cluster, namespace, "r", "PartiallyFailed", operator=op)
    status = obj["status"]
    assert status["counts"]["failed"] == 1
    assert status["counts"]["succeeded"] == 2
    assert status["counts"]["unchanged"] == 1
    assert status["results"][0] == {
        **status["results"][0],
        "pod": "orders-5d8f9c7b6-p2",
        "result": "failed",
        "reason": "reload endpoint returned 500",
    }
    assert "orders-5d8f9c7b6-p2: reload endpoint returned 500" in status["message"]
    assert condition(obj, "Complete")["reason"] == "PartiallyFailed"
    assert "PartiallyFailed" in [e["reason"] for e in events_for(cluster, namespace, "r")]


def test_deadline_times_out_naming_the_silent_pod(cluster, namespace, start_operator, fake_sidecars):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    orders_deployment_pods(cluster, namespace, 2, fake_sidecars, {0: silent()})
    op = start_operator()
    refresh(cluster, namespace, "r", spec({"destination": "orders"}, deadlineSeconds=3))
    obj = wait_phase(cluster, namespace, "r", "TimedOut", timeout=20, operator=op)
    status = obj["status"]
    assert status["counts"] == {
        **status["counts"],
        "targets": 2,
        "succeeded": 1,
        "failed": 1,
        "pending": 0,
        "acked": 1,
    }
    assert status["results"][0]["pod"] == "orders-5d8f9c7b6-p0"
    assert status["results"][0]["result"] == "timeout"
    assert "no answer within 3s" in status["results"][0]["reason"]
    assert "orders-5d8f9c7b6-p0" in status["message"]


def test_missing_source_publishes_nothing(cluster, namespace, start_operator, fake_sidecars):
    fakes = orders_deployment_pods(cluster, namespace, 1, fake_sidecars)
    op = start_operator()
    refresh(cluster, namespace, "r", spec(WORKLOAD, source="nope"))
    obj = wait_phase(cluster, namespace, "r", "Failed", operator=op)
    cond = condition(obj, "SourcesReady")
    assert cond["status"] == "False"
    assert cond["reason"] == "SourceNotFound"
    assert "ConfigMap 'nope' not found" in obj["status"]["message"]
    assert "SourceNotFound" in [e["reason"] for e in events_for(cluster, namespace, "r")]
    assert fakes[0].deliveries() == []


def test_unmanaged_source_publishes_nothing(cluster, namespace, start_operator, fake_sidecars):
    configmap(cluster, namespace, "other", {"a": "1"})
    fakes = orders_deployment_pods(cluster, namespace, 2, fake_sidecars)
    op = start_operator()
    refresh(cluster, namespace, "r", spec(SELECTOR, source="other"))
    obj = wait_phase(cluster, namespace, "r", "Failed", operator=op)
    assert condition(obj, "SourcesReady")["reason"] == "SourceNotManaged"
    assert all(f.deliveries() == [] for f in fakes)


def test_no_targets_and_skipped_pods(cluster, namespace, start_operator):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    create_pod(cluster, namespace, "plain", labels=ORDERS, with_sidecar=False)
    create_pod(cluster, namespace, "starting", labels=ORDERS, configmaps=("app-config",), running=False)
    op = start_operator()
    refresh(cluster, namespace, "r", spec(SELECTOR))
    obj = wait_phase(cluster, namespace, "r", "Failed", operator=op)
    cond = condition(obj, "TargetsResolved")
    assert cond["status"] == "False"
    assert cond["reason"] == "NoTargets"
    assert obj["status"]["counts"]["targets"] == 0
    assert obj["status"]["counts"]["skipped"] == 2
    reasons = dict((s["pod"], s["reason"]) for s in obj["status"]["skipped"])
    assert reasons["plain"].startswith("no refreshbus sidecar")
    assert reasons["starting"].startswith("not running")


def test_missing_workload(cluster, namespace, start_operator):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    op = start_operator()
    refresh(cluster, namespace, "r", spec({"workload": {"kind": "StatefulSet", "name": "ghost"}}))
    obj = wait_phase(cluster, namespace, "r", "Failed", operator=op)
    assert condition(obj, "TargetsResolved")["reason"] == "WorkloadNotFound"


def test_spec_change_after_completion_starts_a_new_round(cluster, namespace, start_operator, fake_sidecars):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    fakes = orders_deployment_pods(cluster, namespace, 2, fake_sidecars)
    op = start_operator()
    refresh(cluster, namespace, "r", spec(SELECTOR))
    first = wait_phase(cluster, namespace, "r", "Succeeded", operator=op)["status"]["eventId"]
    refresh(cluster, namespace, "r", spec(SELECTOR, deadlineSeconds=30))
    obj = wait_for(
        lambda: (
            (o := cfr(cluster, namespace, "r"))["status"].get("eventId") != first
            and o["status"].get("phase") == "Succeeded"
            and o
        ),
        20,
        "second round",
    )
    assert obj["status"]["observedGeneration"] == 2
    for fake in fakes:
        assert [e.id for e in fake.deliveries()] == [first, obj["status"]["eventId"]]


def test_bad_acks_are_counted_and_ignored(cluster, namespace, running_broker, start_operator, fake_sidecars):
    configmap(cluster, namespace, "app-config", {"a": "1"})
    fakes = orders_deployment_pods(cluster, namespace, 2, fake_sidecars, {1: silent()})
    # How each kind of bad ack is routed; whether its sender is who it claims to be is
    # tests/integration/operator/test_ack_identity.py's business ("warn": routed anyway).
    op = start_operator(env={"REFRESHBUS_OPERATOR_ACK_IDENTITY": "warn"})
    refresh(cluster, namespace, "r", spec(SELECTOR, deadlineSeconds=20))
    wait_for(lambda: fakes[1].deliveries(), 10, "the event to reach the silent pod")
    event_id = fakes[1].deliveries()[0].id
    url = running_broker.url("refreshbus-sidecar")

    def ack(pod: str, event: str) -> bytes:
        return encode(
            Ack(
                id=new_id(),
                event_id=event,
                namespace=namespace,
                pod=pod,
                result=AckResult.OK,
                received_at=now(),
            )
        )

    publish_raw(url, ack_key(namespace, "intruder"), ack("intruder", event_id))  # not a target
    publish_raw(url, ack_key(namespace, "x"), b"{not json")  # malformed
    publish_raw(url, ack_key(namespace, "x"), json.dumps({"v": "9.0", "type": "ack"}).encode())  # bad version
    publish_raw(url, ack_key(namespace, "x"), ack("x", new_id()))  # unknown event (dropped after grace)
    publish_raw(url, ack_key(namespace, fakes[0].pod), ack(fakes[0].pod, event_id))  # duplicate
    wait_for(
        lambda: op.metrics().get('refreshbus_operator_acks_total{outcome="unknown_event"}', 0) >= 1,
        15,
        "the unknown-event ack to be dropped",
    )
    m = op.metrics()
    assert m['refreshbus_operator_acks_total{outcome="not_target"}'] == 1
    assert m['refreshbus_operator_acks_total{outcome="malformed"}'] == 2
    assert m['refreshbus_operator_acks_total{outcome="duplicate"}'] == 1
    # The silent target answers late but before the deadline: the status never counted the intruder.
    publish_raw(url, ack_key(namespace, fakes[1].pod), ack(fakes[1].pod, event_id))
    obj = wait_phase(cluster, namespace, "r", "Succeeded", operator=op)
    assert obj["status"]["counts"]["targets"] == 2
    assert obj["status"]["counts"]["acked"] == 2
    assert "intruder" not in json.dumps(obj["status"])


def test_a_silent_pod_is_sent_the_event_again_at_no_extra_api_cost(
    cluster, namespace, start_operator, fake_sidecars
):
    """An event lost on the sidecar's side (here: the first delivery goes unanswered) is sent
    again, same event id, to the silent pod only, well before the deadline; the round makes
    exactly the API requests of a round whose pod answered at once."""
    configmap(cluster, namespace, "app-config", {"a": "1"})
    fakes = orders_deployment_pods(cluster, namespace, 2, fake_sidecars,
                                   {0: lambda _e, nth: None if nth == 1 else ("ok", None)})
    renudge = {"REFRESHBUS_OPERATOR_RENUDGE_INITIAL": "1", "REFRESHBUS_OPERATOR_RENUDGE_MAX": "2"}
    op = start_operator("--standalone", "--no-auto-refresh", env=renudge)

    def api_requests() -> tuple[float, float]:
        """(API requests other than status PATCHes, status PATCHes)."""
        metrics = op.metrics()
        total = sum(v for k, v in metrics.items() if k.startswith("refreshbus_operator_api_requests_total"))
        patches = metrics["refreshbus_operator_status_patches_total"]
        return total - patches, patches

    def run(name: str, pod: str) -> tuple[dict[str, Any], tuple[float, float]]:
        before = api_requests()
        refresh(cluster, namespace, name, spec({"pods": [pod]}, deadlineSeconds=60))
        obj = wait_phase(cluster, namespace, name, "Succeeded", timeout=30, operator=op)
        wait_for(lambda: any(e.get("reason") == "Succeeded" for e in events_for(cluster, namespace, name)),
                 10, "the Succeeded event")
        after = api_requests()
        return obj, (after[0] - before[0], after[1] - before[1])

    run("warm-up", fakes[1].pod)  # the operator's first acks also fetch the token issuer's keys, once
    _, answered_at_once = run("at-once", fakes[1].pod)
    obj, renudged = run("renudged", fakes[0].pod)
    assert [e.id for e in fakes[0].deliveries()] == [obj["status"]["eventId"]] * 2
    assert len(fakes[1].deliveries()) == 2  # one per refresh: the pod that answered is not sent it again
    assert "not answered yet, re-publishing to 1 pod(s)" in op.text()
    assert renudged[0] == answered_at_once[0]
    # Status is written by time, not per ack: an ack that comes a second later than the
    # first status write is one more flush (an ack at once is folded into that write).
    assert renudged[1] <= answered_at_once[1] + 1
