"""Auto-refresh: a real content change of a watched ConfigMap creates one ConfigRefresh
for the workload (debounced); metadata-only updates create none; finished ones are
garbage-collected; watches are one per source (or namespace), bounded, and end with their
workload or :meth:`AutoRefresher.stop`. Real operator, API server and broker; fake sidecars.
Watch connections are counted by the API server itself (``apiserver_longrunning_requests``)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opharness import ORDERS, configmap, deployment, orders_pods, wait_for
from refreshbus_operator.autorefresh import AutoRefresher, content_hash, refresh_manifest
from refreshbus_operator.settings import Config
from refreshbus_support.operator_kube import kube_client

pytestmark = pytest.mark.integration

AUTO = {
    "refreshbus.io/inject": "true",
    "refreshbus.io/auto-refresh": "true",
    "refreshbus.io/configmaps": "app-config",
}


def auto_refreshes(cluster: Any, ns: str) -> list[dict[str, Any]]:
    items = cluster.get_json("-n", ns, "configrefreshes", "-l", "refreshbus.io/auto-refresh-for=orders")[
        "items"
    ]
    return list(items)


def setup(cluster: Any, ns: str, fake_sidecars: Any, n: int = 2) -> list[Any]:
    configmap(cluster, ns, "app-config", {"k": "v0"})
    deployment(cluster, ns, "orders", ORDERS, AUTO)
    return orders_pods(cluster, ns, n, fake_sidecars)


def edit(cluster: Any, ns: str, patch: dict[str, Any]) -> None:
    cluster.kubectl("-n", ns, "patch", "configmap", "app-config", "--type=merge", "-p", json.dumps(patch))


_WATCHES = re.compile(r'^apiserver_longrunning_requests\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$')


def configmap_watches(cluster: Any) -> int:
    """Open ConfigMap watch connections, as the API server counts them: the API server's own
    (a few) plus the operator's under test (tests compare with a count taken before)."""
    total = 0.0
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        m = _WATCHES.match(line)
        if m and 'resource="configmaps"' in m["labels"] and 'verb="WATCH"' in m["labels"]:
            total += float(m["value"])
    return int(total)


def apply_all(cluster: Any, items: list[dict[str, Any]]) -> None:
    """One ``kubectl apply`` for all: the operator gets their events together."""
    manifest = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def workload_manifest(ns: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:test"}]},
            },
        },
    }


def configmap_manifest(ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {"k": "v0"}}


def test_configmap_edit_creates_one_refresh_for_the_workload(
    cluster, namespace, start_operator, fake_sidecars
):
    fakes = setup(cluster, namespace, fake_sidecars)
    # A window longer than the burst below takes, even on a loaded machine.
    op = start_operator(env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "5"})
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "the ConfigMap watch")

    edit(cluster, namespace, {"metadata": {"labels": {"touched": "yes"}}})  # metadata only: nothing to do
    wait_for(
        lambda: op.metrics().get('refreshbus_operator_source_updates_total{update="metadata"}') == 1,
        20,
        "the metadata-only update to be seen",
    )
    assert auto_refreshes(cluster, namespace) == []

    for i in range(1, 4):  # a burst of real edits: the first at once, the others gathered into one
        edit(cluster, namespace, {"data": {"k": f"v{i}"}})
    items = wait_for(
        lambda: [
            i for i in auto_refreshes(cluster, namespace) if i.get("status", {}).get("phase") == "Succeeded"
        ][1:],
        30,
        "the burst's two auto-created refreshes",
    )
    obj = items[0]
    assert obj["metadata"]["name"].startswith("orders-auto-")
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert obj["metadata"]["ownerReferences"][0]["name"] == "orders"
    assert obj["spec"]["target"] == {"workload": {"kind": "Deployment", "name": "orders"}}
    assert obj["spec"]["sources"] == [{"configMap": {"name": "app-config"}}]
    assert obj["status"]["counts"]["succeeded"] == 2
    assert len(auto_refreshes(cluster, namespace)) == 2
    assert all(len(f.deliveries()) == 2 for f in fakes)
    assert op.metrics()["refreshbus_operator_auto_refreshes_total"] == 2


def test_finished_auto_refreshes_are_garbage_collected(cluster, namespace, start_operator, fake_sidecars):
    setup(cluster, namespace, fake_sidecars, n=1)
    op = start_operator(
        env={
            "REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0.2",
            "REFRESHBUS_OPERATOR_TTL_SECONDS_AFTER_FINISHED": "2",
            "REFRESHBUS_OPERATOR_GC_INTERVAL": "0.5",
        }
    )
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "the ConfigMap watch")
    edit(cluster, namespace, {"data": {"k": "v1"}})
    wait_for(
        lambda: any(
            i.get("status", {}).get("phase") == "Succeeded" for i in auto_refreshes(cluster, namespace)
        ),
        30,
        "the auto-created refresh to succeed",
    )
    wait_for(lambda: auto_refreshes(cluster, namespace) == [], 20, "its garbage collection after the TTL")


def test_workload_without_the_annotation_is_not_watched(cluster, namespace, start_operator):
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    deployment(cluster, namespace, "plain", {"app": "plain"}, {"refreshbus.io/configmaps": "app-config"})
    op = start_operator()
    deployment(cluster, namespace, "orders", ORDERS, AUTO)
    wait_for(
        lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "one watch (orders only)"
    )
    cluster.kubectl("-n", namespace, "delete", "deployment", "orders")
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 0, 20, "the watch to stop")


#: What a namespaced operator uses, except list/watch on Secrets (as the chart's ClusterRole
#: with operator.autoRefresh.secrets=false): a Secret may only be read by name (metadata).
ROLE_WITHOUT_SECRET_WATCH = [
    {"apiGroups": ["refreshbus.io"], "resources": ["configrefreshes"],
     "verbs": ["get", "list", "watch", "patch", "create", "delete"]},
    {"apiGroups": ["refreshbus.io"], "resources": ["configrefreshes/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]


#: kopf's own cluster-scoped reads (it scans namespaces and CRDs at start-up).
KOPF_CLUSTER_RULES = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
]


@pytest.fixture
def kopf_cluster_role(cluster: Any, namespace: str) -> Iterator[str]:
    """A ClusterRole with kopf's cluster-scoped reads, deleted after the test."""
    name = f"refreshbus-operator-kopf-{namespace}"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": KOPF_CLUSTER_RULES}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(role))
    yield name
    cluster.kubectl("delete", "clusterrole,clusterrolebinding", name, "--ignore-not-found", check=False)


def operator_kubeconfig(cluster: Any, ns: str, rules: list[dict[str, Any]], cluster_role: str) -> str:
    """A kubeconfig of a ServiceAccount in ``ns`` that holds exactly ``rules`` there (plus
    kopf's cluster-scoped reads)."""
    sa = f"--serviceaccount={ns}:refreshbus-operator"
    cluster.kubectl("-n", ns, "create", "serviceaccount", "refreshbus-operator")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "refreshbus-operator", "namespace": ns}, "rules": rules}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(role))
    cluster.kubectl("-n", ns, "create", "rolebinding", "refreshbus-operator", "--role=refreshbus-operator",
                    sa)
    cluster.kubectl("create", "clusterrolebinding", cluster_role, f"--clusterrole={cluster_role}", sa)
    token = cluster.kubectl("-n", ns, "create", "token", "refreshbus-operator", "--duration=1h").stdout
    return str(cluster.kubeconfig_for_token(token.strip(), f"operator-{ns}"))


def test_secrets_are_never_listed_or_watched_unless_auto_refresh_secrets_is_on(
    cluster, namespace, start_operator, kopf_cluster_role
):
    """Default (AUTO_REFRESH_SECRETS off): run as a ServiceAccount without Secret list/watch,
    the operator auto-refreshes on ConfigMap edits and never touches the workload's Secret: no
    403 anywhere in its debug log, one ConfigMap watch, one note that the Secret is not watched.
    Control: with the setting on, the same identity gets 403s on the Secret watch (so the
    check above would see them)."""
    kubeconfig = operator_kubeconfig(cluster, namespace, ROLE_WITHOUT_SECRET_WATCH, kopf_cluster_role)
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "app-secret", "--from-literal=p=1")
    deployment(cluster, namespace, "orders", ORDERS, {**AUTO, "refreshbus.io/secrets": "app-secret"})

    op = start_operator("--standalone", "--verbose", kubeconfig=kubeconfig,
                        env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0.2"})
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 1, 20, "the ConfigMap watch")
    edit(cluster, namespace, {"data": {"k": "v1"}})
    wait_for(lambda: auto_refreshes(cluster, namespace), 30, "an auto-created refresh (ConfigMap edit)")
    cluster.kubectl("-n", namespace, "patch", "secret", "app-secret", "--type=merge", "-p",
                    json.dumps({"stringData": {"p": "2"}}))
    deployment(cluster, namespace, "orders", ORDERS,  # a second event of the same workload
               {**AUTO, "refreshbus.io/secrets": "app-secret", "touched": "1"})
    wait_for(lambda: op.text().count("auto-refresh on for") >= 1, 10, "the workload to be tracked")
    time.sleep(3)  # a 403 retry loop would have logged several attempts by now
    text = op.text()
    # --verbose logs every API request (refreshbus_operator.kube): not one Secret list or watch
    # was issued, so no 403 either. (Reading a Secret by name -- /secrets/<name> -- would be allowed.)
    secret_collection = f'"GET /api/v1/namespaces/{namespace}/secrets?'
    assert "/api/v1/namespaces/" in text  # the request log is there
    assert secret_collection not in text, op.logs_tail()
    assert not [line for line in text.splitlines() if "secrets" in line and "403" in line]
    assert text.count("are not watched") == 1, op.logs_tail()  # once per workload
    assert "Secrets (app-secret) are not watched" in text
    assert op.metrics()["refreshbus_operator_watched_sources"] == 1
    assert len(auto_refreshes(cluster, namespace)) == 1  # the Secret edit triggered nothing
    op.stop()

    on = start_operator("--standalone", "--verbose", name="secrets-on", kubeconfig=kubeconfig,
                        env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_SECRETS": "true"})
    wait_for(lambda: f"{secret_collection}fieldSelector=metadata.name%3Dapp-secret" in on.text(), 20,
             "a name-scoped Secret list (control)")
    wait_for(lambda: "watch of Secret" in on.text() and "403 Forbidden" in on.text(), 20,
             "the Secret watch to be refused and retried (control)")


def test_concurrent_workload_events_start_one_watch_per_source_and_deleted_workloads_stop_theirs(
    cluster, namespace, start_operator
):
    """Eight workloads naming the same 30 ConfigMaps arrive at once (kopf handles them
    concurrently): exactly 30 watch connections reach the API server, never a second one
    for a source; deleting the workloads closes every one of them (not at the watch's
    server timeout, minutes later)."""
    names = [f"cm-{i:02d}" for i in range(30)]
    apply_all(cluster, [configmap_manifest(namespace, n) for n in names])
    base = configmap_watches(cluster)
    op = start_operator(env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_WATCH_SCOPE": "object"})
    opted_in = {"refreshbus.io/auto-refresh": "true", "refreshbus.io/configmaps": ",".join(names)}
    workloads = [workload_manifest(namespace, f"app-{i}", opted_in) for i in range(8)]
    apply_all(cluster, workloads)
    for w in workloads:  # a second burst of events (MODIFIED) for the same sources
        w["spec"]["template"]["metadata"]["annotations"] = {**opted_in, "touched": "1"}
    apply_all(cluster, workloads)
    wait_for(lambda: configmap_watches(cluster) - base == 30, 30, "30 ConfigMap watches on the API server")
    assert op.metrics()["refreshbus_operator_auto_refresh_watches"] == 30
    assert op.metrics()["refreshbus_operator_watched_sources"] == 30
    assert configmap_watches(cluster) - base == 30, "a source is watched twice"

    cluster.kubectl("-n", namespace, "delete", "deployments", "--all")
    wait_for(lambda: configmap_watches(cluster) == base, 20, "every watch connection to close")
    assert op.metrics()["refreshbus_operator_auto_refresh_watches"] == 0


def test_namespace_scope_watches_each_namespace_once(cluster, namespace, start_operator, fake_sidecars):
    """The default scope: one connection for all the ConfigMaps of the namespace; an edit of
    an unrelated ConfigMap there triggers nothing, an edit of a watched one refreshes."""
    fakes = setup(cluster, namespace, fake_sidecars, n=1)
    configmap(cluster, namespace, "unrelated", {"k": "v0"})
    base = configmap_watches(cluster)
    op = start_operator(env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0.2"})
    wait_for(lambda: configmap_watches(cluster) - base == 1, 20, "one namespace-wide ConfigMap watch")
    deployment(cluster, namespace, "other", {"app": "other"}, {**AUTO, "refreshbus.io/configmaps": "b,c"})
    wait_for(lambda: op.metrics().get("refreshbus_operator_watched_sources") == 3, 20, "3 sources watched")
    assert configmap_watches(cluster) - base == 1
    cluster.kubectl("-n", namespace, "patch", "configmap", "unrelated", "--type=merge", "-p",
                    json.dumps({"data": {"k": "v1"}}))
    edit(cluster, namespace, {"data": {"k": "v1"}})
    wait_for(lambda: auto_refreshes(cluster, namespace), 30, "the refresh for app-config")
    assert op.metrics()['refreshbus_operator_source_updates_total{update="content"}'] == 1
    assert len(fakes[0].deliveries()) <= 1


def test_watches_are_bounded(cluster, namespace, start_operator):
    apply_all(cluster, [configmap_manifest(namespace, n) for n in ("a", "b", "c")])
    base = configmap_watches(cluster)
    op = start_operator(env={"REFRESHBUS_OPERATOR_AUTO_REFRESH_WATCH_SCOPE": "object",
                             "REFRESHBUS_OPERATOR_AUTO_REFRESH_MAX_WATCHES": "2"})
    deployment(cluster, namespace, "orders", ORDERS, {**AUTO, "refreshbus.io/configmaps": "a,b,c"})
    wait_for(lambda: op.metrics().get("refreshbus_operator_auto_refresh_unwatched_sources") == 1, 20,
             "one source left unwatched")
    assert op.metrics()["refreshbus_operator_auto_refresh_watches"] == 2
    assert "more than auto_refresh_max_watches=2" in op.text()
    wait_for(lambda: configmap_watches(cluster) - base == 2, 20, "2 watch connections")


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """``wait_for`` for a test running on the event loop (kubectl runs in a thread)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


def test_stop_leaves_no_task_and_start_resumes_every_known_workload(cluster, namespace):
    """The interface a paused/unpaused HA replica uses, in-process against the real API
    server: stop() cancels and awaits every task (no connection left), start() watches the
    workloads known by then again, alive() reports a dead supervisor."""
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    base = configmap_watches(cluster)
    body = workload_manifest(namespace, "orders", AUTO)
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"

    async def scenario() -> None:
        async with kube_client(cluster.kubeconfig) as kube:
            auto = AutoRefresher(Config(auto_refresh_debounce=0.1, namespaces=(namespace,)), kube)
            await auto.start()
            auto.workload_event("Deployment", "ADDED", body)
            await until(lambda: configmap_watches(cluster) - base == 1, 20, "the watch")
            assert auto.alive()

            await auto.stop()
            assert asyncio.all_tasks() == {asyncio.current_task()}
            await until(lambda: configmap_watches(cluster) == base, 20, "the connection to close")
            assert auto.alive()  # stopped on purpose

            await auto.start()
            await until(lambda: configmap_watches(cluster) - base == 1, 20, "the watch again")
            edit(cluster, namespace, {"data": {"k": "v1"}})
            await until(lambda: auto_refreshes(cluster, namespace), 20, "a ConfigRefresh after restart")

            def broken() -> set[Any]:
                raise RuntimeError("supervisor bug")

            auto.wanted_sources = broken  # type: ignore[method-assign]
            auto.workload_event("Deployment", "DELETED", body)
            await until(lambda: not auto.alive(), 10, "alive() to report the dead supervisor")
            await auto.stop()
            assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


def test_an_edit_is_refreshed_however_long_creating_its_configrefresh_fails(
    cluster, namespace, caplog
):
    """The API server refuses the create (here: RBAC, until the binding appears) for longer
    than the old five attempts lasted (~15 s): the edit is still refreshed once it may be,
    with one ConfigRefresh (it used to be dropped for good)."""
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    sa = f"--serviceaccount={namespace}:auto"
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "auto")
    cluster.kubectl("-n", namespace, "create", "role", "watch", "--verb=list,watch", "--resource=configmaps")
    cluster.kubectl("-n", namespace, "create", "rolebinding", "watch", "--role=watch", sa)
    cluster.kubectl("-n", namespace, "create", "role", "create", "--verb=create",
                    "--resource=configrefreshes.refreshbus.io")
    token = cluster.kubectl("-n", namespace, "create", "token", "auto", "--duration=1h").stdout.strip()
    kubeconfig = cluster.kubeconfig_for_token(token, f"auto-{namespace}")
    body = workload_manifest(namespace, "orders", AUTO)
    caplog.set_level("WARNING", logger="refreshbus_operator.autorefresh")
    base = configmap_watches(cluster)

    def refused() -> int:
        return sum("could not create a ConfigRefresh" in r.getMessage() for r in caplog.records)

    async def scenario() -> None:
        async with kube_client(kubeconfig) as kube:
            auto = AutoRefresher(Config(auto_refresh_debounce=0.1, namespaces=(namespace,)), kube)
            await auto.start()
            try:
                auto.workload_event("Deployment", "ADDED", body)
                await until(lambda: configmap_watches(cluster) - base == 1, 20, "the watch")
                edit(cluster, namespace, {"data": {"k": "v1"}})
                await until(lambda: refused() >= 6, 60, "six refused creates")
                cluster.kubectl("-n", namespace, "create", "rolebinding", "create", "--role=create", sa)
                await until(lambda: auto_refreshes(cluster, namespace), 60, "the ConfigRefresh once allowed")
                assert auto_refreshes(cluster, namespace)[0]["spec"]["sources"] == [
                    {"configMap": {"name": "app-config"}}
                ]
            finally:
                await auto.stop()

    asyncio.run(scenario())
    assert len(auto_refreshes(cluster, namespace)) == 1


def test_an_edit_made_while_no_replica_watched_is_refreshed_by_the_next(cluster, namespace):
    """Replica A refreshes an edit, then stops (killed, or paused by a takeover); the
    ConfigMap is edited before replica B watches it. B compares what it finds with what A's
    last ConfigRefresh was made for and refreshes the edit (it used to take the edited
    content as its baseline: the pods stayed on the old content). Without such an edit, B
    creates nothing more."""
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    base = configmap_watches(cluster)
    body = workload_manifest(namespace, "orders", AUTO)
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000002"

    async def replica(edit_to: str | None, wanted: int) -> None:
        async with kube_client(cluster.kubeconfig) as kube:
            auto = AutoRefresher(Config(auto_refresh_debounce=0.1, namespaces=(namespace,)), kube)
            await auto.start()
            try:
                auto.workload_event("Deployment", "ADDED", body)
                await until(lambda: configmap_watches(cluster) - base == 1, 20, "the watch")
                if edit_to is not None:
                    edit(cluster, namespace, {"data": {"k": edit_to}})
                elif wanted == len(auto_refreshes(cluster, namespace)):
                    # Listed and compared with the record. A list the API server answers from
                    # its cache may still miss the newest record; the edit is then checked again
                    # when its window ends. Wait until nothing is left scheduled: the count
                    # below then proves no ConfigRefresh was added.
                    await until(lambda: not (auto.changed or auto.timers or auto.due), 20,
                                "nothing left scheduled")
                await until(lambda: len(auto_refreshes(cluster, namespace)) >= wanted, 20,
                            f"{wanted} auto-created ConfigRefreshes")
            finally:
                await auto.stop()
        await until(lambda: configmap_watches(cluster) == base, 20, "the watch to end")

    asyncio.run(replica("v1", 1))  # replica A: a watched edit
    edit(cluster, namespace, {"data": {"k": "v2"}})  # nobody watches
    asyncio.run(replica(None, 2))  # replica B refreshes it
    latest = max(auto_refreshes(cluster, namespace), key=lambda i: i["metadata"]["creationTimestamp"])
    assert json.loads(latest["metadata"]["annotations"]["refreshbus.io/source-hashes"]).keys() == {
        "ConfigMap/app-config"
    }
    asyncio.run(replica(None, 2))  # replica C: nothing changed since B's refresh
    assert len(auto_refreshes(cluster, namespace)) == 2


def test_an_edit_another_replica_already_refreshed_gets_no_second_configrefresh(
    cluster, namespace, caplog
):
    """Takeover race (chaos F8): an edit was made while this replica did not watch, and the
    replica stepping down is still creating its ConfigRefresh. Found when the watch starts,
    such an edit opens a window instead of being refreshed at once; by the window's end that
    ConfigRefresh has landed, is found made for exactly this content, and no second one is
    created. The next edit, seen live, still gets its own at once."""
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    base = configmap_watches(cluster)
    body = workload_manifest(namespace, "orders", AUTO)
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000003"
    source = (namespace, "ConfigMap", "app-config")
    wkey = (namespace, "Deployment", "orders")
    caplog.set_level("INFO", logger="refreshbus_operator.autorefresh")

    def record_current() -> None:
        """What the other replica's ConfigRefresh for the current content looks like."""
        current = cluster.get_json("-n", namespace, "configmap", "app-config")
        other = refresh_manifest(namespace, "Deployment", "orders", body["metadata"]["uid"], [source],
                                 {source: content_hash("ConfigMap", current)})
        cluster.kubectl("create", "-f", "-", input=json.dumps(other))

    def skipped() -> bool:
        return any("already has a ConfigRefresh" in r.getMessage() for r in caplog.records)

    record_current()  # the last refresh before this replica, of v0
    edit(cluster, namespace, {"data": {"k": "v1"}})  # while this replica does not watch

    async def scenario() -> None:
        async with kube_client(cluster.kubeconfig) as kube:
            auto = AutoRefresher(Config(auto_refresh_debounce=5.0, namespaces=(namespace,)), kube)
            await auto.start()
            try:
                auto.workload_event("Deployment", "ADDED", body)
                await until(lambda: source in auto.changed.get(wkey, ()), 20, "the unwatched edit found")
                assert wkey in auto.timers, "an edit found at start must wait for its window"
                assert not auto.due
                await asyncio.to_thread(record_current)  # the other replica's create lands
                await until(skipped, 20, "the window to end and the record to be found")
                assert len(auto_refreshes(cluster, namespace)) == 2

                edit(cluster, namespace, {"data": {"k": "v2"}})
                await until(lambda: len(auto_refreshes(cluster, namespace)) == 3, 20, "the next edit's")
            finally:
                await auto.stop()
        await until(lambda: configmap_watches(cluster) == base, 20, "the watch to end")

    asyncio.run(scenario())
    assert len(auto_refreshes(cluster, namespace)) == 3


def test_an_edit_is_refreshed_at_once_and_a_burst_is_gathered(cluster, namespace):
    """An edit gets its ConfigRefresh at once: it used to wait a quiet period
    (AUTO_REFRESH_DEBOUNCE, 1 s by default) after every edit, the largest share of edit ->
    reloaded in ``make bench-e2e``. The edits made within the window that refresh opened are
    gathered for one more, due when the window ends (here long after the test)."""
    configmap(cluster, namespace, "app-config", {"k": "v0"})
    base = configmap_watches(cluster)
    body = workload_manifest(namespace, "orders", AUTO)
    source = (namespace, "ConfigMap", "app-config")
    wkey = (namespace, "Deployment", "orders")

    async def scenario() -> None:
        async with kube_client(cluster.kubeconfig) as kube:
            auto = AutoRefresher(Config(auto_refresh_debounce=600, namespaces=(namespace,)), kube)
            await auto.start()
            try:
                auto.workload_event("Deployment", "ADDED", body)
                await until(lambda: configmap_watches(cluster) - base == 1, 20, "the watch")
                edit(cluster, namespace, {"data": {"k": "v1"}})
                await until(lambda: auto_refreshes(cluster, namespace), 20, "the edit's ConfigRefresh")
                for i in (2, 3):
                    edit(cluster, namespace, {"data": {"k": f"v{i}"}})
                await until(lambda: auto.changed.get(wkey) == {source}
                            and auto.watches[(namespace, "ConfigMap", None)].hashes["app-config"]
                            == content_hash("ConfigMap", cluster.get_json("-n", namespace, "configmap",
                                                                          "app-config")),
                            20, "the next edits to be seen and gathered")
                assert len(auto_refreshes(cluster, namespace)) == 1
                assert wkey in auto.timers
                assert not auto.due
            finally:
                await auto.stop()

    asyncio.run(scenario())


def test_a_versioned_workload_gets_rollouts_and_a_rolled_back_content_never_again(cluster, namespace, caplog):
    """refreshbus.io/rollout: each ConfigMap edit gets a ConfigRefresh with spec.rollout (a
    Secret edit a plain one: Secrets are not versioned). Once a content was rolled back (the
    record rejects it), editing the ConfigMap back to it creates nothing; a new edit does.
    In-process, with no orchestrator running: the rejection is written as it would write it."""
    from refreshbus_operator import release as rs

    configmap(cluster, namespace, "app-config", {"k": "v0"})
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "app-secret", "--from-literal=p=0")
    versioned = {**AUTO, "refreshbus.io/secrets": "app-secret",
                 "refreshbus.io/rollout": "1,100%", "refreshbus.io/rollout-bake": "10s"}
    body = json.loads(cluster.kubectl("apply", "-o", "json", "-f", "-", input=json.dumps(
        workload_manifest(namespace, "orders", versioned))).stdout)
    caplog.set_level("INFO", logger="refreshbus_operator.autorefresh")
    base = configmap_watches(cluster)

    def made() -> list[dict[str, Any]]:
        return sorted(auto_refreshes(cluster, namespace), key=lambda i: i["metadata"]["annotations"].get(
            "refreshbus.io/recorded-at", i["metadata"]["creationTimestamp"]))

    async def scenario() -> None:
        async with kube_client(cluster.kubeconfig) as kube:
            await rs.ensure(kube, body)
            config = Config(auto_refresh_debounce=0.1, auto_refresh_secrets=True, namespaces=(namespace,))
            auto = AutoRefresher(config, kube)
            await auto.start()
            try:
                auto.workload_event("Deployment", "ADDED", body)
                await until(lambda: configmap_watches(cluster) - base == 1, 20, "the watch")
                edit(cluster, namespace, {"data": {"k": "bad"}})
                await until(lambda: len(made()) == 1, 20, "the rollout of the edit")
                rollout = made()[0]
                # (the CRD fills in its defaults for the rest)
                assert rollout["spec"]["rollout"] == {
                    "steps": [1, "100%"], "bakeSeconds": 10,
                    "maxFailures": 0, "autoRollback": True, "paused": False,
                }
                assert rollout["spec"]["sources"] == [{"configMap": {"name": "app-config"}}]
                # The orchestrator tried it and rolled it back.
                name = rollout["metadata"]["name"]
                revision = await rs.propose(kube, namespace, "Deployment", "orders", name)
                await rs.reject(kube, namespace, "Deployment", "orders", revision, "orders-1: not Ready")

                edit(cluster, namespace, {"data": {"k": "good"}})  # a new edit: a new rollout
                await until(lambda: len(made()) == 2, 20, "the rollout of the new edit")
                assert made()[1]["spec"]["rollout"]["steps"] == [1, "100%"]

                edit(cluster, namespace, {"data": {"k": "bad"}})  # back to the rolled-back content
                await until(lambda: any("not rolling it out again" in r.getMessage() for r in caplog.records),
                            20, "the rolled-back content to be recognised")
                assert len(made()) == 2

                secret = {"data": {"p": base64.b64encode(b"1").decode()}}
                cluster.kubectl("-n", namespace, "patch", "secret", "app-secret", "--type=merge",
                                "-p", json.dumps(secret))
                await until(lambda: len(made()) == 3, 20, "the Secret's refresh")
                plain = made()[2]
                assert plain["spec"]["sources"] == [{"secret": {"name": "app-secret"}}]
                assert "rollout" not in plain["spec"]
            finally:
                await auto.stop()

    asyncio.run(scenario())
