"""The operator's release record store (refreshbus_operator.release) against the real API
server: creation from the live ConfigMaps, the candidate's life (propose, move, promote,
reject), plain refreshes (accept_live), concurrent writers, the 1 MiB limit, ownership."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from refreshbus_operator import release as rs
from refreshbus_operator.kube import Kube
from refreshbus_support.operator_kube import kube_client
from refreshbus_wire import pods
from refreshbus_wire import release as wire
from refreshbus_wire.hashing import content_hash

pytestmark = pytest.mark.integration

ROLLOUT = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web", pods.ANN_ROLLOUT: "1,25%,100%"}
UNVERSIONED = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web"}


def apply(cluster: Any, body: dict[str, Any]) -> dict[str, Any]:
    out = cluster.kubectl("apply", "-o", "json", "-f", "-", input=json.dumps(body))
    stored: dict[str, Any] = json.loads(out.stdout)
    return stored


def deployment(
    cluster: Any, namespace: str, annotations: dict[str, str], name: str = "shop"
) -> dict[str, Any]:
    return apply(
        cluster,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
                },
            },
        },
    )


def configmap(
    cluster: Any,
    namespace: str,
    data: dict[str, str],
    binary: dict[str, bytes] | None = None,
    name: str = "web",
) -> None:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }
    if binary:
        body["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    if cluster.kubectl("replace", "-f", "-", input=json.dumps(body), check=False).returncode:
        cluster.kubectl("create", "-f", "-", input=json.dumps(body))


def raw_record(cluster: Any, namespace: str, name: str = "shop") -> dict[str, Any]:
    out = cluster.kubectl(
        "-n", namespace, "get", "configmap", wire.record_name("Deployment", name), "-o", "json"
    )
    stored: dict[str, Any] = json.loads(out.stdout)
    return stored


def run(cluster: Any, test: Callable[[Kube], Awaitable[None]]) -> None:
    async def main() -> None:
        async with kube_client(cluster.kubeconfig) as kube:
            await test(kube)

    asyncio.run(main())


def web_hash(data: dict[str, str]) -> str:
    return content_hash("ConfigMap", "web", {k: v.encode() for k, v in data.items()})


def test_a_rollout_workload_gets_its_record_with_the_content_before_any_edit(
    cluster: Any, namespace: str
) -> None:
    configmap(cluster, namespace, {"app.yaml": "v: 1\n"}, {"logo.png": b"\x89PNG\x00\xff"})
    shop = deployment(cluster, namespace, ROLLOUT)
    plain = deployment(
        cluster, namespace, UNVERSIONED, name="plain"
    )

    async def test(kube: Kube) -> None:
        created = await rs.ensure(kube, shop)
        assert created is not None
        assert created.accepted.revision == 1
        expected = content_hash("ConfigMap", "web", {"app.yaml": b"v: 1\n", "logo.png": b"\x89PNG\x00\xff"})
        assert created.accepted.hashes() == {"ConfigMap/web": expected}
        assert [h.revision for h in created.history] == [1]

        record = await rs.read_record(kube, namespace, "Deployment", "shop")
        assert record is not None
        assert record.files(record.release.accepted) == {
            "ConfigMap/web": {"app.yaml": b"v: 1\n", "logo.png": b"\x89PNG\x00\xff"}
        }

        # An edit after creation does not touch the record: it keeps what ran before.
        configmap(cluster, namespace, {"app.yaml": "v: 2\n"})
        again = await rs.ensure(kube, shop)
        assert again is not None
        assert again.accepted.hashes() == {"ConfigMap/web": expected}

        assert await rs.ensure(kube, plain) is None
        assert await rs.read(kube, namespace, "Deployment", "plain") is None

    run(cluster, test)
    meta = raw_record(cluster, namespace)["metadata"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "shop",
            "uid": shop["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "refreshbus-operator",
        "app.kubernetes.io/component": "release",
        "refreshbus.io/workload-kind": "Deployment",
        "refreshbus.io/workload-name": "shop",
    }
    missing = cluster.kubectl(
        "-n", namespace, "get", "configmap", wire.record_name("Deployment", "plain"), check=False
    )
    assert missing.returncode != 0


def test_the_record_waits_for_every_configmap_it_versions(cluster: Any, namespace: str) -> None:
    """Made without one of them, that ConfigMap's first edit would reach every pod (no
    revision would name it, so the sidecars would read it live): nothing to roll back to."""
    configmap(cluster, namespace, {"app.yaml": "v: 1\n"})
    shop = deployment(cluster, namespace, {**ROLLOUT, pods.ANN_CONFIGMAPS: "web,late"})

    async def test(kube: Kube) -> None:
        with pytest.raises(rs.ConfigMapMissingError, match=r"waits for its ConfigMap\(s\) late") as info:
            await rs.ensure(kube, shop)
        assert info.value.reason == "ConfigMapNotFound"
        assert await rs.read(kube, namespace, "Deployment", "shop") is None
        configmap(cluster, namespace, {"x": "1"}, name="late")
        release = await rs.ensure(kube, shop)
        assert release is not None
        assert sorted(release.accepted.sources) == ["ConfigMap/late", "ConfigMap/web"]

    run(cluster, test)


def test_a_record_left_by_a_deleted_workload_of_that_name_is_replaced(cluster: Any, namespace: str) -> None:
    configmap(cluster, namespace, {"app.yaml": "old\n"})
    first = deployment(cluster, namespace, ROLLOUT)

    async def create(kube: Kube) -> None:
        assert await rs.ensure(kube, first) is not None

    run(cluster, create)
    # No garbage collector runs here: the record outlives its workload, as it may for a while.
    cluster.kubectl("-n", namespace, "delete", "deployment", "shop")
    configmap(cluster, namespace, {"app.yaml": "new\n"})
    second = deployment(cluster, namespace, ROLLOUT)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]

    async def recreate(kube: Kube) -> None:
        release = await rs.ensure(kube, second)
        assert release is not None
        assert release.accepted.hashes() == {"ConfigMap/web": web_hash({"app.yaml": "new\n"})}

    run(cluster, recreate)
    owners = raw_record(cluster, namespace)["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [second["metadata"]["uid"]]


def test_a_candidate_is_proposed_moved_and_promoted(cluster: Any, namespace: str) -> None:
    configmap(cluster, namespace, {"app.yaml": "v: 1\n"})
    shop = deployment(cluster, namespace, ROLLOUT)

    async def test(kube: Kube) -> None:
        await rs.ensure(kube, shop)
        assert await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1") == 1  # nothing new
        configmap(cluster, namespace, {"app.yaml": "v: 2\n"})
        revision = await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1")
        assert revision == 2
        configmap(cluster, namespace, {"app.yaml": "v: 3\n"})
        # A resumed rollout gets its candidate back, not the newer edit.
        assert await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1") == 2

        await rs.move(kube, namespace, "Deployment", "shop", 2, ["shop-a"])
        await rs.move(kube, namespace, "Deployment", "shop", 2, ["shop-a", "shop-b"])
        release = await rs.read(kube, namespace, "Deployment", "shop")
        assert release is not None
        assert release.candidate is not None
        assert release.candidate.pods == ("shop-a", "shop-b")
        assert release.candidate.refresh == "cfr-1"
        assert release.candidate.hashes() == {"ConfigMap/web": web_hash({"app.yaml": "v: 2\n"})}
        assert release.revision_for("shop-b").revision == 2
        assert release.revision_for("shop-c").revision == 1

        await rs.promote(kube, namespace, "Deployment", "shop", 2)
        await rs.promote(kube, namespace, "Deployment", "shop", 2)  # idempotent
        record = await rs.read_record(kube, namespace, "Deployment", "shop")
        assert record is not None
        assert record.release.candidate is None
        assert record.release.accepted.revision == 2
        assert [h.revision for h in record.release.history] == [2, 1]
        assert record.files(record.release.accepted) == {"ConfigMap/web": {"app.yaml": b"v: 2\n"}}

        with pytest.raises(rs.StaleRevisionError, match="not the candidate"):
            await rs.move(kube, namespace, "Deployment", "shop", 2, ["shop-c"])

    run(cluster, test)
    # Only the accepted revision's files are kept: revision 1's went with the promotion.
    binary = raw_record(cluster, namespace).get("binaryData") or {}
    assert sorted(base64.b64decode(v) for v in binary.values()) == [b"v: 2\n"]


def test_a_rejected_candidate_sends_its_pods_back_and_is_never_proposed_again_by_its_refresh(
    cluster: Any, namespace: str
) -> None:
    configmap(cluster, namespace, {"app.yaml": "good\n"})
    shop = deployment(cluster, namespace, ROLLOUT)

    async def test(kube: Kube) -> None:
        await rs.ensure(kube, shop)
        configmap(cluster, namespace, {"app.yaml": "bad\n"})
        revision = await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1")
        await rs.move(kube, namespace, "Deployment", "shop", revision, ["shop-a"])
        moved = await rs.reject(kube, namespace, "Deployment", "shop", revision, "shop-a: not Ready")
        assert moved == ["shop-a"]
        assert await rs.reject(kube, namespace, "Deployment", "shop", revision, "again") == []

        release = await rs.read(kube, namespace, "Deployment", "shop")
        assert release is not None
        assert release.candidate is None
        assert release.revision_for("shop-a").hashes() == {"ConfigMap/web": web_hash({"app.yaml": "good\n"})}
        assert [(r.revision, r.reason, r.refresh) for r in release.rejected] == [
            (2, "shop-a: not Ready", "cfr-1")
        ]
        assert release.rejected[0].sources == {"ConfigMap/web": web_hash({"app.yaml": "bad\n"})}

        with pytest.raises(
            rs.AlreadyRejectedError, match="revision 2 and it was rejected: shop-a: not Ready"
        ):
            await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1")
        # Another rollout (a user's explicit one) may try the content again, as a new revision.
        assert await rs.propose(kube, namespace, "Deployment", "shop", "cfr-2") == 3

    run(cluster, test)


def test_a_plain_refresh_accepts_the_live_content(cluster: Any, namespace: str) -> None:
    configmap(cluster, namespace, {"app.yaml": "v: 1\n"})
    shop = deployment(cluster, namespace, ROLLOUT)

    async def test(kube: Kube) -> None:
        await rs.ensure(kube, shop)
        before = raw_record(cluster, namespace)["metadata"]["resourceVersion"]
        assert await rs.accept_live(kube, namespace, "Deployment", "shop", "plain-1") == 1
        assert raw_record(cluster, namespace)["metadata"]["resourceVersion"] == before  # nothing written

        configmap(cluster, namespace, {"app.yaml": "v: 2\n"})
        candidate = await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1")
        await rs.move(kube, namespace, "Deployment", "shop", candidate, ["shop-a"])
        configmap(cluster, namespace, {"app.yaml": "v: 3\n"})
        assert await rs.accept_live(kube, namespace, "Deployment", "shop", "plain-2") == 3
        release = await rs.read(kube, namespace, "Deployment", "shop")
        assert release is not None
        assert release.candidate is None  # a plain refresh moves every pod, canaries too
        assert release.revision_for("shop-a").hashes() == {"ConfigMap/web": web_hash({"app.yaml": "v: 3\n"})}
        assert [(h.revision, h.refresh) for h in release.history] == [(3, "plain-2"), (1, None)]

    run(cluster, test)


def test_concurrent_writers_lose_no_update(cluster: Any, namespace: str) -> None:
    configmap(cluster, namespace, {"app.yaml": "v: 1\n"})
    shop = deployment(cluster, namespace, ROLLOUT)
    names = [f"shop-{i}" for i in range(20)]

    async def main() -> None:
        async with kube_client(cluster.kubeconfig) as one, kube_client(cluster.kubeconfig) as two:
            await rs.ensure(one, shop)
            configmap(cluster, namespace, {"app.yaml": "v: 2\n"})
            revision = await rs.propose(one, namespace, "Deployment", "shop", "cfr-1")
            start = one.requests + two.requests
            # Two operator replicas (two clients), ten writers each, all at once.
            await asyncio.gather(
                *(
                    rs.move(one if i % 2 else two, namespace, "Deployment", "shop", revision, [pod])
                    for i, pod in enumerate(names)
                )
            )
            # Without conflicts: one GET and one PUT each. More means writers lost races (409)
            # and tried again -- and still none of them lost its pod.
            assert one.requests + two.requests - start > 2 * len(names)
            release = await rs.read(one, namespace, "Deployment", "shop")
            assert release is not None
            assert release.candidate is not None
            assert sorted(release.candidate.pods) == sorted(names)

    asyncio.run(main())


def test_a_record_over_1_mib_is_refused_and_nothing_changes(cluster: Any, namespace: str) -> None:
    configmap(cluster, namespace, {"app.yaml": "a" * 600_000})
    shop = deployment(cluster, namespace, ROLLOUT)

    async def test(kube: Kube) -> None:
        await rs.ensure(kube, shop)
        before = raw_record(cluster, namespace)
        configmap(cluster, namespace, {"app.yaml": "b" * 600_000})
        with pytest.raises(rs.RecordTooLargeError) as info:
            await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1")
        assert info.value.reason == "RecordTooLarge"
        assert "more than the 1048576 a ConfigMap may hold" in str(info.value)
        assert "nothing was changed" in str(info.value)
        after = raw_record(cluster, namespace)
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    run(cluster, test)


def test_an_unversioned_workload_is_refused_with_the_way_to_version_it(cluster: Any, namespace: str) -> None:
    configmap(cluster, namespace, {"app.yaml": "v: 1\n"})
    deployment(cluster, namespace, UNVERSIONED)

    async def test(kube: Kube) -> None:
        with pytest.raises(rs.NotVersionedError, match=r"refreshbus\.io/rollout") as info:
            await rs.propose(kube, namespace, "Deployment", "shop", "cfr-1")
        assert info.value.reason == "NotVersioned"
        with pytest.raises(rs.NotVersionedError):
            await rs.move(kube, namespace, "Deployment", "shop", 2, ["shop-a"])

    run(cluster, test)


def test_the_keeper_follows_the_template_and_costs_nothing_when_nothing_changed(
    cluster: Any, namespace: str
) -> None:
    configmap(cluster, namespace, {"app.yaml": "v: 1\n"})
    shop = deployment(cluster, namespace, ROLLOUT)
    plain = deployment(cluster, namespace, UNVERSIONED, name="plain")

    async def test(kube: Kube) -> None:
        keeper = rs.Keeper(kube)
        assert await keeper.handle("ADDED", plain) == "absent"
        assert await keeper.handle("DELETED", plain) == "absent"
        assert kube.requests == 0  # never versioned: no request at all
        assert await keeper.handle("ADDED", shop) == "ensured"
        assert await rs.read(kube, namespace, "Deployment", "shop") is not None
        before = kube.requests
        status_only = {**shop, "status": {"replicas": 3}}
        assert await keeper.handle("MODIFIED", status_only) == "unchanged"
        assert kube.requests == before  # Deployments change all the time: no request per event

        unversioned = deployment(cluster, namespace, UNVERSIONED)
        assert await keeper.handle("MODIFIED", unversioned) == "removed"
        assert await rs.read(kube, namespace, "Deployment", "shop") is None
        versioned = deployment(cluster, namespace, ROLLOUT)
        assert await keeper.handle("MODIFIED", versioned) == "ensured"
        assert await keeper.handle("DELETED", versioned) == "removed"
        assert await rs.read(kube, namespace, "Deployment", "shop") is None

    run(cluster, test)
