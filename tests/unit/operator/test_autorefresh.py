"""Auto-refresh pure parts: opt-in detection, content hash, the created object, GC choice."""

from __future__ import annotations

import time

from refreshbus_operator import autorefresh as ar


def workload(annotations: dict[str, str]) -> dict:
    return {
        "metadata": {"name": "orders", "namespace": "ns", "uid": "u1"},
        "spec": {"template": {"metadata": {"annotations": annotations}}},
    }


def test_opt_in_needs_the_annotation_and_some_sources():
    assert ar.opted_in(workload({"refreshbus.io/configmaps": "a"})) is None
    assert ar.opted_in(workload({"refreshbus.io/auto-refresh": "true"})) is None
    w = ar.opted_in(
        workload(
            {
                "refreshbus.io/auto-refresh": "true",
                "refreshbus.io/configmaps": "a, b",
                "refreshbus.io/secrets": "s",
            }
        )
    )
    assert w is not None
    assert w.sources("ns") == {("ns", "ConfigMap", "a"), ("ns", "ConfigMap", "b"), ("ns", "Secret", "s")}


def test_a_rollout_annotation_becomes_the_spec_rollout_of_its_refreshes():
    base = {"refreshbus.io/auto-refresh": "true", "refreshbus.io/configmaps": "a"}
    rollout = {"refreshbus.io/rollout": "1, 25%,100%", "refreshbus.io/rollout-bake": "2m"}
    w = ar.opted_in(workload({**base, **rollout}))
    assert w is not None
    assert w.rollout == {"steps": [1, "25%", "100%"], "bakeSeconds": 120}
    w = ar.opted_in(workload({**base, "refreshbus.io/rollout": "100%"}))
    assert w is not None
    assert w.rollout == {"steps": ["100%"]}  # the CRD's default bake
    w = ar.opted_in(workload(base))
    assert w is not None
    assert w.rollout is None
    body = ar.refresh_manifest("ns", "Deployment", "web", "u", [("ns", "ConfigMap", "a")],
                               rollout={"steps": [1, "100%"], "bakeSeconds": 10})
    assert body["spec"]["rollout"] == {"steps": [1, "100%"], "bakeSeconds": 10}
    plain = ar.refresh_manifest("ns", "Deployment", "web", "u", [("ns", "ConfigMap", "a")])
    assert "rollout" not in plain["spec"]


def test_content_hash_ignores_metadata_and_sees_data():
    base = {"metadata": {"resourceVersion": "1", "labels": {}}, "data": {"k": "v"}}
    relabelled = {"metadata": {"resourceVersion": "2", "labels": {"x": "y"}}, "data": {"k": "v"}}
    changed = {"metadata": {"resourceVersion": "3"}, "data": {"k": "w"}}
    assert ar.content_hash("ConfigMap", base) == ar.content_hash("ConfigMap", relabelled)
    assert ar.content_hash("ConfigMap", base) != ar.content_hash("ConfigMap", changed)
    assert ar.content_hash("ConfigMap", {"binaryData": {"b": "AA=="}}) != ar.content_hash("ConfigMap", {})
    secret = {"data": {"password": "czNjcmV0"}, "type": "Opaque"}
    digest = ar.content_hash("Secret", secret)
    assert "czNjcmV0" not in digest
    assert len(digest) == 64


def test_refresh_manifest_links_the_workload():
    body = ar.refresh_manifest(
        "ns", "StatefulSet", "db", "uid-1", [("ns", "ConfigMap", "a"), ("ns", "Secret", "s")]
    )
    meta = body["metadata"]
    assert meta["generateName"] == "db-auto-"
    assert meta["labels"] == {
        "refreshbus.io/auto-refresh-for": "db",
        "refreshbus.io/auto-refresh-kind": "statefulset",
    }
    assert meta["ownerReferences"][0]["uid"] == "uid-1"
    assert body["spec"] == {
        "sources": [{"configMap": {"name": "a"}}, {"secret": {"name": "s"}}],
        "target": {"workload": {"kind": "StatefulSet", "name": "db"}},
    }
    assert len(ar.label_value("x" * 200)) == 63


def finished(name: str, done: float, phase: str = "Succeeded", workload: str = "orders") -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done))
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "labels": {
                "refreshbus.io/auto-refresh-for": workload,
                "refreshbus.io/auto-refresh-kind": "deployment",
            },
        },
        "status": {"phase": phase, "completionTime": stamp},
    }


def test_gc_by_ttl_and_history_limit():
    now = 1_800_000_000.0
    items = [finished(f"r{i}", now - 10 * i) for i in range(8)]  # r0 newest
    items.append({"metadata": {"namespace": "ns", "name": "running"}, "status": {"phase": "InProgress"}})
    items.append(finished("other", now - 5, workload="web"))
    victims = ar.gc_victims(items, now, ttl=3600, history_limit=5)
    assert victims == [("ns", "r5"), ("ns", "r6"), ("ns", "r7")]
    assert ar.gc_victims(items, now, ttl=25, history_limit=5) == [
        ("ns", "r3"),
        ("ns", "r4"),
        ("ns", "r5"),
        ("ns", "r6"),
        ("ns", "r7"),
    ]


def test_secrets_are_watched_only_when_auto_refresh_secrets_is_on(caplog):
    from refreshbus_operator.settings import Config

    body = workload(
        {
            "refreshbus.io/auto-refresh": "true",
            "refreshbus.io/configmaps": "a",
            "refreshbus.io/secrets": "s1, s2",
        }
    )
    caplog.set_level("INFO", logger=ar.__name__)

    off = ar.AutoRefresher(Config(), kube=None)  # type: ignore[arg-type]
    assert Config().auto_refresh_secrets is False  # opt-in
    off.workload_event("Deployment", "ADDED", body)
    off.workload_event("Deployment", "MODIFIED", body)
    assert off.wanted_sources() == {("ns", "ConfigMap", "a")}
    notes = [r.getMessage() for r in caplog.records if "are not watched" in r.getMessage()]
    assert len(notes) == 1  # once per workload, not per event
    assert "Deployment ns/orders" in notes[0]
    assert "s1, s2" in notes[0]
    assert "REFRESHBUS_OPERATOR_AUTO_REFRESH_SECRETS" in notes[0]
    # A workload naming only Secrets is tracked but watches nothing.
    only = workload({"refreshbus.io/auto-refresh": "true", "refreshbus.io/secrets": "s"})
    only["metadata"]["name"] = "db"
    off.workload_event("StatefulSet", "ADDED", only)
    assert off.wanted_sources() == {("ns", "ConfigMap", "a")}

    caplog.clear()
    on = ar.AutoRefresher(Config(auto_refresh_secrets=True), kube=None)  # type: ignore[arg-type]
    on.workload_event("Deployment", "ADDED", body)
    assert on.wanted_sources() == {("ns", "ConfigMap", "a"), ("ns", "Secret", "s1"), ("ns", "Secret", "s2")}
    # Secrets are watched by name even with namespace-wide ConfigMap watches.
    assert {ar.watch_key(s, "namespace") for s in on.wanted_sources()} == {
        ("ns", "ConfigMap", None),
        ("ns", "Secret", "s1"),
        ("ns", "Secret", "s2"),
    }
    assert {ar.watch_key(s, "object") for s in on.wanted_sources()} == on.wanted_sources()
    assert not [r for r in caplog.records if "are not watched" in r.getMessage()]


def test_the_newest_record_wins_within_one_second_of_creation_time():
    """Two auto-created ConfigRefreshes of a workload made in the same second (an edit, then
    an edit no replica watched): the later record is the baseline, whatever the list order."""
    source = ("ns", "ConfigMap", "app-config")

    def record(digest: str, recorded_at: str) -> dict[str, object]:
        item = ar.refresh_manifest("ns", "Deployment", "orders", "uid", [source], {source: digest})
        meta = item["metadata"]
        meta["creationTimestamp"] = "2026-12-02T03:00:00Z"
        meta["annotations"][ar.RECORDED_AT_ANNOTATION] = recorded_at
        return item

    older, newer = record("v1", "1796180400.100000"), record("v2", "1796180400.900000")
    for items in ([older, newer], [newer, older]):
        assert ar.recorded_hashes(items) == {("ns", "Deployment", "orders"): {source: "v2"}}
