"""Target resolution: workload/selector/pods/destination, skipping, routing keys."""

from __future__ import annotations

from typing import Any

import pytest
from refreshbus_operator import targets as tg
from refreshbus_wire.routing import pod_key, workload_key

NS = "shop"


def pod(
    name: str,
    labels: dict[str, str] | None = None,
    *,
    phase: str = "Running",
    sidecar: bool = True,
    workload: tuple[str, str] | None = ("Deployment", "orders"),
    annotations: dict[str, str] | None = None,
    declared: bool = True,
    configmaps: str = "app-config",
) -> dict[str, Any]:
    env = []
    if workload and declared:
        env = [
            {"name": "REFRESHBUS_WORKLOAD_KIND", "value": workload[0]},
            {"name": "REFRESHBUS_WORKLOAD_NAME", "value": workload[1]},
        ]
    obj: dict[str, Any] = {
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": {"refreshbus.io/configmaps": configmaps, **(annotations or {})},
        },
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": phase},
    }
    if workload and not declared and workload[0] == "Deployment":
        obj["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": f"{workload[1]}-abc12"}]
        obj["metadata"]["labels"]["pod-template-hash"] = "abc12"
    if sidecar:
        obj["spec"]["initContainers"] = [{"name": "refreshbus-sidecar", "env": env}]
    return obj


def pods(*objs: dict[str, Any]) -> list[tg.Pod]:
    return [tg.pod_from_json(o) for o in objs]


def test_workload_with_every_pod_ready_uses_one_workload_key():
    res = tg.resolve(
        NS,
        {"workload": {"kind": "Deployment", "name": "orders"}},
        pods(pod("o-1", {"app": "orders"}), pod("o-2", {"app": "orders"})),
        {"matchLabels": {"app": "orders"}},
    )
    assert res.names == {"o-1", "o-2"}
    assert res.routing_keys == (workload_key(NS, "Deployment", "orders"),)


def test_workload_with_a_skipped_pod_falls_back_to_pod_keys():
    res = tg.resolve(
        NS,
        {"workload": {"kind": "Deployment", "name": "orders"}},
        pods(pod("o-1", {"app": "orders"}), pod("o-2", {"app": "orders"}, phase="Pending")),
        {"matchLabels": {"app": "orders"}},
    )
    assert res.routing_keys == (pod_key(NS, "o-1"),)
    assert res.skipped == (("o-2", "not running (phase Pending)"),)


def test_workload_key_needs_the_sidecars_to_declare_the_workload():
    res = tg.resolve(
        NS,
        {"workload": {"kind": "Deployment", "name": "orders"}},
        pods(pod("o-1", {"app": "orders"}, declared=False)),
        {"matchLabels": {"app": "orders"}},
    )
    assert res.routing_keys == (pod_key(NS, "o-1"),)


def test_selector_and_skip_reasons():
    res = tg.resolve(
        NS,
        {
            "selector": {
                "matchLabels": {"tier": "web"},
                "matchExpressions": [{"key": "frozen", "operator": "DoesNotExist"}],
            }
        },
        pods(
            pod("a", {"tier": "web"}),
            pod("b", {"tier": "web"}, sidecar=False),
            pod("c", {"tier": "web", "frozen": "1"}),
            pod("d", {"tier": "db"}),
            pod("e", {"tier": "web"}, phase="Succeeded"),
        ),
    )
    assert res.names == {"a"}
    assert dict(res.skipped) == {
        "b": "no refreshbus sidecar (not opted in)",
        "e": "not running (phase Succeeded)",
    }
    assert res.routing_keys == (pod_key(NS, "a"),)


def test_terminating_pod_is_skipped():
    obj = pod("a")
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert tg.resolve(NS, {"pods": ["a"]}, pods(obj)).skipped == (("a", "terminating"),)


def test_pod_names_and_missing_ones():
    res = tg.resolve(NS, {"pods": ["b", "zz"]}, pods(pod("a"), pod("b")))
    assert res.names == {"b"}
    assert res.skipped == (("zz", "pod not found"),)


# Worked examples from the reference table (instance id = <app>:<pod>).
@pytest.mark.parametrize(
    ("destination", "hits"),
    [
        ("**", {"orders-7d9f6c8b5-abcde", "orders-7d9f6c8b5-fghij", "orders-api-5c4d-xyz12"}),
        ("orders", {"orders-7d9f6c8b5-abcde", "orders-7d9f6c8b5-fghij"}),
        ("orders:**", {"orders-7d9f6c8b5-abcde", "orders-7d9f6c8b5-fghij"}),
        ("orders:orders-7d9f*", {"orders-7d9f6c8b5-abcde", "orders-7d9f6c8b5-fghij"}),
        ("orders:orders-7d9f6c8b5-abcde", {"orders-7d9f6c8b5-abcde"}),
        ("ord*", {"orders-7d9f6c8b5-abcde", "orders-7d9f6c8b5-fghij", "orders-api-5c4d-xyz12"}),
        ("orders*", {"orders-7d9f6c8b5-abcde", "orders-7d9f6c8b5-fghij", "orders-api-5c4d-xyz12"}),
        ("Orders", set()),
        ("orders-api", {"orders-api-5c4d-xyz12"}),
        ("*:orders-7d9f6c8b5-abcde", {"orders-7d9f6c8b5-abcde"}),
        ("*", {"orders-7d9f6c8b5-abcde", "orders-7d9f6c8b5-fghij", "orders-api-5c4d-xyz12"}),
    ],
)
def test_destination_worked_examples(destination, hits):
    all_pods = pods(
        pod("orders-7d9f6c8b5-abcde", {"app": "orders"}),
        pod("orders-7d9f6c8b5-fghij", {"app.kubernetes.io/name": "orders", "app": "ignored"}),
        pod("orders-api-5c4d-xyz12", {}, workload=("Deployment", "orders-api")),
        pod("not-opted-in", {"app": "orders"}, sidecar=False),
    )
    res = tg.resolve(NS, {"destination": destination}, all_pods)
    assert res.names == hits
    assert res.skipped == ()  # pods that are not opted in are not candidates of a destination


def test_app_name_derivation():
    assert tg.pod_from_json(pod("p", {"app": "a"}, annotations={"refreshbus.io/app": "over"})).app == "over"
    assert tg.pod_from_json(pod("p", {"app.kubernetes.io/name": "n", "app": "a"})).app == "n"
    assert tg.pod_from_json(pod("p", {"app": "a"})).app == "a"
    assert tg.pod_from_json(pod("p", {}, workload=("StatefulSet", "db"))).app == "db"
    assert tg.pod_from_json(pod("p", {}, workload=("Deployment", "web"), declared=False)).app == "web"
    assert tg.pod_from_json(pod("p", {}, workload=None)).app == "p"


def test_the_sidecar_protocol_stamped_by_the_injector_is_read():
    stamped = pod("p", {}, annotations={"refreshbus.io/sidecar-protocol": "1.3"})
    assert tg.pod_from_json(stamped).sidecar_protocol == "1.3"
    assert tg.pod_from_json(pod("p", {})).sidecar_protocol is None  # injected by an older operator


def test_owner_workload_from_replicaset():
    meta = {
        "labels": {"pod-template-hash": "5d8f9c7b6"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "orders-5d8f9c7b6"}],
    }
    assert tg.owner_workload(meta) == ("Deployment", "orders")
    assert tg.owner_workload({"ownerReferences": [{"kind": "StatefulSet", "name": "db"}]}) == (
        "StatefulSet",
        "db",
    )
    assert tg.owner_workload({}) is None


@pytest.mark.parametrize(
    ("selector", "query"),
    [
        ({"matchLabels": {"b": "2", "a": "1"}}, "a=1,b=2"),
        ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["y", "x"]}]}, "t in (x,y)"),
        ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["x"]}]}, "t notin (x)"),
        ({"matchExpressions": [{"key": "t", "operator": "Exists"}]}, "t"),
        ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, "!t"),
    ],
)
def test_selector_query(selector, query):
    assert tg.selector_query(selector) == query


def test_selector_matches():
    sel = {
        "matchLabels": {"a": "1"},
        "matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["x"]}],
    }
    assert tg.selector_matches(sel, {"a": "1"})
    assert tg.selector_matches(sel, {"a": "1", "t": "y"})
    assert not tg.selector_matches(sel, {"a": "1", "t": "x"})
    assert not tg.selector_matches(sel, {"a": "2"})


def test_unmanaged_sources():
    targets = pods(pod("a", configmaps="app-config"), pod("b", configmaps="other"))
    assert tg.unmanaged_sources([("ConfigMap", "app-config")], targets) == [
        "ConfigMap 'app-config' is not managed by pod(s) b"
    ]
    assert tg.unmanaged_sources([("Secret", "s")], targets) == ["Secret 's' is not managed by pod(s) a, b"]


class PagedPods:
    """The pods LIST of an API server, in pages (``limit``/``continue``); the first
    ``expire`` continue tokens are answered 410 Gone, as when they expired."""

    def __init__(self, objs: list[dict[str, Any]], expire: int = 0) -> None:
        self.objs = objs
        self.expire = expire
        self.queries: list[dict[str, Any]] = []

    async def aget(self, path: str, **query: Any) -> Any:
        from refreshbus_operator.kube import ApiError

        self.queries.append(dict(query))
        start = int(query.get("continue") or 0)
        if start and self.expire:
            self.expire -= 1
            raise ApiError(410, "Gone", {"reason": "Expired"})
        end = start + int(query["limit"])
        meta = {"continue": str(end)} if end < len(self.objs) else {}
        return {"items": self.objs[start:end], "metadata": meta}


@pytest.mark.parametrize("expire", [0, 1])
def test_pods_are_listed_in_pages_and_an_expired_continue_token_lists_again(
    monkeypatch: pytest.MonkeyPatch, expire: int
) -> None:
    import asyncio

    monkeypatch.setattr(tg, "LIST_PAGE", 3)
    api = PagedPods([pod(f"p{i}", {"app": "orders"}) for i in range(7)], expire=expire)
    target = {"selector": {"matchLabels": {"app": "orders"}}}
    resolution = asyncio.run(tg.fetch_and_resolve(api, "ns", target))  # type: ignore[arg-type]
    assert sorted(resolution.names) == [f"p{i}" for i in range(7)]
    assert all(q["labelSelector"] == "app=orders" and q["limit"] == 3 for q in api.queries)
    assert len(api.queries) == 3 + 2 * expire  # 3 pages; an expired token: the list again
