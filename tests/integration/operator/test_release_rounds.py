"""Rounds on versioned workloads, through the real operator process, API server and broker:
the event names the release record revision (protocol 1.3), a plain refresh first makes
the live content the accepted revision, a rollout's child publishes the revision it is
given and leaves the record alone. Fake sidecars speak the real protocol."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from opharness import ORDERS, configmap, deployment, orders_pods, refresh, wait_for, wait_phase
from refreshbus_operator import release as rs
from refreshbus_operator.settings import RELEASE_ANNOTATION
from refreshbus_support.operator_kube import kube_client
from refreshbus_wire import ReleaseRef, pods
from refreshbus_wire.hashing import content_hash
from refreshbus_wire.release import Release, record_name

pytestmark = pytest.mark.integration

RECORD = record_name("Deployment", "orders")
VERSIONED = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "app-config", pods.ANN_ROLLOUT: "1,100%"}
WORKLOAD = {"workload": {"kind": "Deployment", "name": "orders"}}
SPEC = {"sources": [{"configMap": {"name": "app-config"}}], "target": WORKLOAD}


def read(cluster: Any, namespace: str) -> Release | None:
    async def main() -> Release | None:
        async with kube_client(cluster.kubeconfig) as kube:
            return await rs.read(kube, namespace, "Deployment", "orders")

    return asyncio.run(main())


def app_config(value: str) -> dict[str, str]:
    return {"ConfigMap/app-config": content_hash("ConfigMap", "app-config", {"a": value.encode()})}


def versioned_orders(
    cluster: Any, namespace: str, start_operator: Any, fake_sidecars: Any
) -> tuple[Any, Any]:
    """Deployment ``orders`` carrying refreshbus.io/rollout, two pods with fake sidecars, the
    operator, and the record it made of app-config ``{"a": "1"}`` (revision 1)."""
    configmap(cluster, namespace, "app-config", {"a": "1"})
    deployment(cluster, namespace, "orders", ORDERS, VERSIONED)
    fakes = orders_pods(cluster, namespace, 2, fake_sidecars)
    op = start_operator()
    # The operator records the content before any edit, as soon as it sees the template.
    first = wait_for(lambda: read(cluster, namespace), 30, "the release record")
    assert (first.accepted.revision, first.accepted.hashes()) == (1, app_config("1"))
    return fakes, op


def test_a_plain_refresh_of_a_versioned_workload_accepts_the_live_content_and_names_it(
    cluster: Any, namespace: str, start_operator: Any, fake_sidecars: Any
) -> None:
    fakes, op = versioned_orders(cluster, namespace, start_operator, fake_sidecars)

    configmap(cluster, namespace, "app-config", {"a": "2"})
    refresh(cluster, namespace, "plain", SPEC)
    obj = wait_phase(cluster, namespace, "plain", "Succeeded", operator=op)
    release = read(cluster, namespace)
    assert release is not None
    assert (release.accepted.revision, release.accepted.hashes()) == (2, app_config("2"))
    assert release.history[0].refresh == "plain"
    for fake in fakes:
        (event,) = fake.deliveries(obj["status"]["eventId"])
        assert event.release == ReleaseRef(RECORD, 2)

    # Nothing changed since: the same revision, no new one.
    refresh(cluster, namespace, "again", SPEC)
    obj = wait_phase(cluster, namespace, "again", "Succeeded", operator=op)
    assert fakes[0].deliveries(obj["status"]["eventId"])[0].release == ReleaseRef(RECORD, 2)
    release = read(cluster, namespace)
    assert release is not None
    assert release.accepted.revision == 2


def test_a_rollout_step_publishes_the_revision_it_is_given_and_leaves_the_record_alone(
    cluster: Any, namespace: str, start_operator: Any, fake_sidecars: Any
) -> None:
    fakes, op = versioned_orders(cluster, namespace, start_operator, fake_sidecars)
    configmap(cluster, namespace, "app-config", {"a": "2"})

    def child(name: str, annotation: str, targets: list[str] | None = None) -> None:
        manifest = {
            "apiVersion": "refreshbus.io/v1alpha1",
            "kind": "ConfigRefresh",
            "metadata": {
                "name": name, "namespace": namespace, "annotations": {RELEASE_ANNOTATION: annotation}
            },
            "spec": {**SPEC, "target": {"pods": targets or [fakes[0].pod]}},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    child("step-1", json.dumps({"name": RECORD, "revision": 7}))
    obj = wait_phase(cluster, namespace, "step-1", "Succeeded", operator=op)
    (event,) = fakes[0].deliveries(obj["status"]["eventId"])
    assert event.release == ReleaseRef(RECORD, 7)
    assert fakes[1].deliveries() == []
    release = read(cluster, namespace)
    assert release is not None
    # Not accepted: the rollout decides what the pods run, through the record's candidate.
    assert (release.accepted.revision, release.accepted.hashes()) == (1, app_config("1"))

    # A pod that acks another revision (a stale record read), or none (an old sidecar that
    # applied the live ConfigMaps), did not take the step, whatever it answered.
    fakes[0].runs_revision = lambda _event: 6
    fakes[1].runs_revision = lambda _event: None
    child("step-2", json.dumps({"name": RECORD, "revision": 7}), [fakes[0].pod, fakes[1].pod])
    obj = wait_phase(cluster, namespace, "step-2", "Failed", operator=op)
    reasons = {r["pod"]: r.get("reason") for r in obj["status"]["results"]}
    assert reasons == {fakes[0].pod: "applied release revision 6, expected 7",
                       fakes[1].pod: "applied no release revision, expected 7"}

    child("broken", '{"name": "x"}')
    obj = wait_phase(cluster, namespace, "broken", "Failed", operator=op)
    assert f"the annotation {RELEASE_ANNOTATION} is not" in obj["status"]["message"]
