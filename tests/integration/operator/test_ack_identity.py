"""Ack identity against the real API server (its service-account token issuer and
TokenReview): tokens are minted exactly as the kubelet projects them (TokenRequest bound to
the Pod object, audience refreshbus.io/ack), and the operator's real AckVerifier asks the
real API server through the operator's own Kube client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from opharness import (
    ORDERS,
    cfr,
    condition,
    configmap,
    events_for,
    orders_pods,
    publish_raw,
    refresh,
    wait_for,
    wait_phase,
)
from refreshbus_support.pods import TestPod, ack_token, create_pod, delete_pod
from refreshbus_wire import Ack, AckResult, encode, new_id, now, routing

pytestmark = pytest.mark.integration

SA = "orders"


def ack_from(pod: str, namespace: str, token: str | None, event_id: str | None = None) -> Ack:
    return Ack(id=new_id(), event_id=event_id or new_id(), namespace=namespace, pod=pod,
               result=AckResult.OK, received_at=now(), identity_token=token)  # fmt: skip


def run_with_verifier(cluster: Any, body: Callable[[Any], Awaitable[None]]) -> None:
    from refreshbus_operator.ackidentity import AckVerifier
    from refreshbus_operator.kube import Kube, load_configuration

    async def main() -> None:
        kube = Kube(load_configuration(cluster.kubeconfig))
        try:
            await body(AckVerifier(kube.apost))
        finally:
            await kube.aclose()

    asyncio.run(main())


@pytest.fixture
def pods(cluster: Any, namespace: str) -> tuple[TestPod, TestPod]:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", SA)
    web = create_pod(cluster, namespace, "orders-web-1", service_account=SA, configmaps=("app-config",))
    rogue = create_pod(cluster, namespace, "orders-rogue", service_account=SA, configmaps=("app-config",))
    return web, rogue


def test_a_genuine_ack_is_verified_with_one_review_for_many_acks(
    cluster: Any, namespace: str, pods: tuple[TestPod, TestPod]
) -> None:
    from refreshbus_operator.ackidentity import Check

    web, _ = pods
    token = ack_token(cluster, namespace, web.name, web.uid, service_account=SA)

    async def body(verifier: Any) -> None:
        acks = [ack_from(web.name, namespace, token) for _ in range(200)]
        verdicts = await asyncio.gather(*(verifier.verify(ack) for ack in acks))
        assert {v.check for v in verdicts} == {Check.VERIFIED}
        assert verifier.reviews == 1  # concurrent acks share one review, later ones hit the cache
        assert (await verifier.verify(ack_from(web.name, namespace, token))).ok
        assert verifier.reviews == 1

    run_with_verifier(cluster, body)


def test_a_rogue_pods_ack_for_another_pod_is_forged(
    cluster: Any, namespace: str, pods: tuple[TestPod, TestPod]
) -> None:
    from refreshbus_operator.ackidentity import Check

    web, rogue = pods
    rogue_token = ack_token(cluster, namespace, rogue.name, rogue.uid, service_account=SA)

    async def body(verifier: Any) -> None:
        # Its own, genuine token, in an ack that speaks for the other pod.
        verdict = await verifier.verify(ack_from(web.name, namespace, rogue_token))
        assert verdict.check is Check.FORGED, verdict
        assert f"{namespace}/{rogue.name}" in verdict.detail
        # The same token for itself is fine: identity, not mere possession of a token, counts.
        assert (await verifier.verify(ack_from(rogue.name, namespace, rogue_token))).ok
        # Its token with the claims rewritten to name the other pod: the signature no longer
        # matches and the API server refuses it.
        header, payload, signature = rogue_token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["kubernetes.io"]["pod"] = {"name": web.name, "uid": web.uid}
        forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        forged = f"{header}.{forged_payload}.{signature}"
        verdict = await verifier.verify(ack_from(web.name, namespace, forged))
        assert verdict.check is Check.INVALID, verdict
        assert "does not accept" in verdict.detail
        # ... and a flood of copies costs one review.
        reviews = verifier.reviews
        for _ in range(20):
            assert (await verifier.verify(ack_from(web.name, namespace, forged))).check is Check.INVALID
        assert verifier.reviews == reviews

    run_with_verifier(cluster, body)


def test_tokens_for_another_audience_unbound_or_of_a_deleted_pod_are_invalid(
    cluster: Any, namespace: str, pods: tuple[TestPod, TestPod]
) -> None:
    from refreshbus_operator.ackidentity import Check

    web, rogue = pods
    # The API server's own audience; ours but bound to no pod; a pod deleted since.
    api_token = ack_token(cluster, namespace, web.name, web.uid, service_account=SA, audience=None)
    unbound = ack_token(cluster, namespace, web.name, service_account=SA, bound=False)
    gone = ack_token(cluster, namespace, rogue.name, rogue.uid, service_account=SA)
    delete_pod(cluster, rogue)

    async def body(verifier: Any) -> None:
        missing = await verifier.verify(ack_from(web.name, namespace, None))
        assert missing.check is Check.MISSING
        wrong_audience = await verifier.verify(ack_from(web.name, namespace, api_token))
        assert wrong_audience.check is Check.INVALID
        assert "audience refreshbus.io/ack" in wrong_audience.detail
        not_bound = await verifier.verify(ack_from(web.name, namespace, unbound))
        assert not_bound.check is Check.INVALID
        assert "bound to a pod" in not_bound.detail
        deleted = await verifier.verify(ack_from(rogue.name, namespace, gone))
        assert deleted.check is Check.INVALID, deleted

    run_with_verifier(cluster, body)


# -- the real operator process -----------------------------------------------------------------

SPEC = {"sources": [{"configMap": {"name": "app-config"}}], "target": {"selector": {"matchLabels": ORDERS}}}


def event_id_of(cluster: Any, namespace: str, name: str) -> str:
    event_id = wait_for(lambda: cfr(cluster, namespace, name).get("status", {}).get("eventId"), 20, "eventId")
    return str(event_id)


def test_a_forged_ack_is_refused_counted_and_shown_a_replayed_one_ignored_a_genuine_one_folded(
    cluster: Any, namespace: str, start_operator: Any, fake_sidecars: Any, running_broker: Any
) -> None:
    configmap(cluster, namespace, "app-config", {"a": "1"})
    silent_pod, _answering = orders_pods(cluster, namespace, 2, fake_sidecars, {0: lambda _e, _n: None})
    victim = silent_pod.pod
    # A compromised pod of another app in the namespace, with its own genuine token.
    rogue = create_pod(cluster, namespace, "rogue-0", labels={"app": "rogue"}, configmaps=("app-config",))
    rogue_token = ack_token(cluster, namespace, rogue.name, rogue.uid)
    victim_token = ack_token(cluster, namespace, victim)

    def send(event_id: str, pod: str, token: str) -> None:
        ack = ack_from(pod, namespace, token, event_id)
        publish_raw(running_broker.url("refreshbus-sidecar"), routing.ack_key(namespace, pod), encode(ack))

    op = start_operator()
    refresh(cluster, namespace, "first", {**SPEC, "deadlineSeconds": 8})
    first = event_id_of(cluster, namespace, "first")
    # The rogue answers "ok" for the silent pod, under the silent pod's routing key.
    send(first, victim, rogue_token)
    shown = wait_for(lambda: condition(cfr(cluster, namespace, "first"), "AckIdentity"), 20, "AckIdentity")
    assert (shown["status"], shown["reason"]) == ("False", "AckForged")
    assert f"{namespace}/{rogue.name}" in shown["message"]
    done = wait_phase(cluster, namespace, "first", ("TimedOut", "PartiallyFailed"), timeout=30, operator=op)
    results = {r["pod"]: r["result"] for r in done["status"]["results"]}
    assert results[victim] == "timeout"  # never folded as the pod's answer
    assert done["status"]["counts"]["succeeded"] == 1
    warnings = [e for e in events_for(cluster, namespace, "first") if e["reason"] == "AckForged"]
    assert [w["type"] for w in warnings] == ["Warning"], warnings
    assert victim in warnings[0]["message"]
    assert rogue_token not in warnings[0]["message"]
    metrics = op.metrics()
    # (Acks left in the session broker's shared ack queue by earlier tests, tokenless, may be
    # refused too: only the forged count is this test's alone.)
    assert metrics['refreshbus_operator_acks_total{outcome="refused"}'] >= 1
    assert metrics['refreshbus_operator_ack_identity_checks_total{result="forged"}'] == 1
    assert rogue_token not in op.text()  # the token never reaches a log line

    # A genuine ack of the victim for the first event, replayed during the second round:
    # it answers the first event only, and that one is over.
    refresh(cluster, namespace, "second", {**SPEC, "deadlineSeconds": 30})
    second = event_id_of(cluster, namespace, "second")
    assert second != first
    wait_for(lambda: cfr(cluster, namespace, "second")["status"]["counts"]["acked"] == 1, 20,
             "the answering pod's ack")  # fmt: skip
    send(first, victim, victim_token)
    wait_for(lambda: op.metrics().get('refreshbus_operator_acks_total{outcome="late"}', 0) >= 1, 20,
             "the replayed ack counted as late")  # fmt: skip
    status = cfr(cluster, namespace, "second")["status"]
    assert victim not in {r["pod"] for r in status.get("results") or ()}
    assert status["counts"]["acked"] == 1
    # The victim's own genuine ack for the second event is folded.
    send(second, victim, victim_token)
    done = wait_phase(cluster, namespace, "second", "Succeeded", timeout=20, operator=op)
    assert done["status"]["counts"]["succeeded"] == 2
    assert not condition(done, "AckIdentity")
    assert op.metrics()['refreshbus_operator_ack_identity_checks_total{result="verified"}'] >= 3


def test_in_warn_mode_an_ack_without_identity_is_folded_but_shown(
    cluster: Any, namespace: str, start_operator: Any, fake_sidecars: Any, running_broker: Any
) -> None:
    configmap(cluster, namespace, "app-config", {"a": "1"})
    (old,) = orders_pods(cluster, namespace, 1, fake_sidecars, {0: lambda _e, _n: None})
    op = start_operator(env={"REFRESHBUS_OPERATOR_ACK_IDENTITY": "warn"})
    refresh(cluster, namespace, "r", SPEC)
    # A sidecar older than protocol 1.2: no identity token at all.
    ack = ack_from(old.pod, namespace, None, event_id_of(cluster, namespace, "r"))
    publish_raw(running_broker.url("refreshbus-sidecar"), routing.ack_key(namespace, old.pod), encode(ack))
    done = wait_phase(cluster, namespace, "r", "Succeeded", timeout=20, operator=op)
    shown = condition(done, "AckIdentity")
    assert (shown["status"], shown["reason"]) == ("False", "AckUnverified")
    assert "accepted anyway" in shown["message"]
    assert op.metrics()['refreshbus_operator_ack_identity_checks_total{result="missing"}'] >= 1
