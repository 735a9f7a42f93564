"""The refresh logic against a fake API (a dict) and a real temporary directory."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from refreshbus_sidecar import reload as reload_mod
from refreshbus_sidecar.config import Settings, load
from refreshbus_sidecar.delivery import Store
from refreshbus_sidecar.kubeapi import ForbiddenError, NotFoundError, ServerError
from refreshbus_sidecar.metrics import Metrics
from refreshbus_sidecar.refresher import Refresher, addressed_to, rv_older
from refreshbus_wire import pods as podc
from refreshbus_wire.events import (
    AckResult,
    RefreshEvent,
    ReleaseRef,
    Scope,
    Source,
    SourceKind,
    Target,
    now,
)
from refreshbus_wire.hashing import content_hash
from refreshbus_wire.release import (
    RECORD_PREFIX,
    Candidate,
    Release,
    Revision,
    encode_record,
    record_name,
    snapshot,
)
from refreshbus_wire.routing import PodIdentity


class FakeApi:
    timeout = 10.0

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        #: GETs of sources (the release record's are counted apart)
        self.calls = 0
        self.record_calls = 0
        #: ``not_older_than`` of every source GET
        self.asked: list[str | None] = []

    def put(self, name: str, rv: str, **data: str) -> None:
        self.objects[("ConfigMap", name)] = {"metadata": {"name": name, "resourceVersion": rv}, "data": data}

    def get(self, kind: str, namespace: str, name: str, *, not_older_than: str | None = None
            ) -> dict[str, Any]:
        if name.startswith(RECORD_PREFIX):
            self.record_calls += 1
        else:
            self.calls += 1
            self.asked.append(not_older_than)
        try:
            return self.objects[(kind, name)]
        except KeyError:
            raise NotFoundError(f"{kind} {namespace}/{name} not found") from None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load({
        podc.ENV_NAMESPACE: "shop", podc.ENV_POD_NAME: "orders-1", podc.ENV_CONFIGMAPS: "cfg",
        podc.ENV_BROKER_URLS: "amqp://x", podc.ENV_TARGET_DIR: str(tmp_path),
        podc.ENV_FETCH_JITTER: "0", podc.ENV_ACTION: "signal", podc.ENV_PROCESS: "app",
        podc.ENV_WORKLOAD_KIND: "Deployment", podc.ENV_WORKLOAD_NAME: "orders",
    })


class Reloads:
    def __init__(self) -> None:
        self.calls = 0
        self.fail: str | None = None

    def __call__(self, action: reload_mod.ReloadAction) -> str:
        self.calls += 1
        if self.fail:
            raise reload_mod.ReloadError(self.fail)
        return "ok"


@pytest.fixture
def reloads(monkeypatch: pytest.MonkeyPatch) -> Reloads:
    fake = Reloads()
    monkeypatch.setattr(reload_mod, "run", fake)
    return fake


def event(
    rv: str | None = None, name: str = "cfg", event_id: str = "e-1", namespace: str = "shop"
) -> RefreshEvent:
    t = now()
    return RefreshEvent(id=event_id, origin="test", target=Target(scope=Scope.ALL),
                        sources=(Source(SourceKind.CONFIGMAP, name, namespace, rv),),
                        issued_at=t, deadline=t + timedelta(minutes=1))


def make(settings: Settings, api: FakeApi, tmp_path: Path) -> Refresher:
    return Refresher(settings, api, Store(tmp_path), Metrics(), sleep=lambda s: None, retry_delays=(0, 0, 0),
                     max_fetch_wait=0)


def test_first_sync_writes_without_reloading_then_events_reload_once(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)

    assert refresher.sync("start-up").result is AckResult.OK
    assert refresher.ready
    assert reloads.calls == 0
    api.put("cfg", "11", a="2")
    ack = refresher.handle(event("11"), now(), 0.0)

    assert ack.result is AckResult.OK
    assert reloads.calls == 1
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "2"


def test_a_duplicate_event_id_is_answered_with_its_first_result_without_fetching(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    first = refresher.handle(event("11"), now(), 0.0)
    calls = api.calls

    again = refresher.handle(event("11"), now(), 0.0)  # e.g. redelivered: the first ack was lost

    assert first.result is AckResult.OK
    assert again.result is AckResult.OK
    assert again.config_hash == first.config_hash
    assert api.calls == calls
    assert reloads.calls == 1
    assert refresher.metrics.get("refreshbus_sidecar_duplicate_events_total") == 1


def test_an_event_whose_content_the_catch_up_sync_applied_after_it_was_issued_acks_ok(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    missed = event("11", event_id="e-missed")  # issued while the sidecar was disconnected
    assert refresher.sync("reconnected").result is AckResult.OK  # the catch-up applies it

    ack = refresher.handle(missed, now(), 0.0)  # then the event is (re)delivered

    assert ack.result is AckResult.OK
    assert reloads.calls == 1  # the catch-up's reload only
    later = refresher.handle(event("11", event_id="e-later"), now(), 0.0)  # issued after the apply
    assert later.result is AckResult.UNCHANGED
    assert reloads.calls == 1


def test_an_event_whose_content_an_event_applied_after_the_catch_up_acks_unchanged(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    old = event("11", event_id="e-old")
    refresher.sync("reconnected")
    api.put("cfg", "12", a="3")
    assert refresher.handle(event("12", event_id="e-new"), now(), 0.0).result is AckResult.OK
    api.put("cfg", "13", a="3")  # a label edit: same content

    # The catch-up's apply is no longer what is on disk: nothing of the old event is news.
    assert refresher.handle(old, now(), 0.0).result is AckResult.UNCHANGED


def test_the_worst_case_of_one_job_counts_every_fetch_attempt_the_retry_window_and_the_reload(
    settings: Settings, tmp_path: Path
) -> None:
    refresher = Refresher(settings, FakeApi(), Store(tmp_path), Metrics(), retry_delays=(1, 1, 1),
                          max_fetch_wait=100)
    # one attempt for the ConfigMap and one for the release record (each tried twice, 10 s
    # each), reload 5 s, health 10 s + 2 s
    a_sync = 2 * 2 * 10 + 5 + 10 + 2

    assert refresher.worst_case_seconds(None) == a_sync
    # 2 GETs x 4 attempts x 2 tries x 10 s + 2 x 3 s of delays, the retry window (the event's
    # deadline, 1 min away, comes before the 100 s cap), one more attempt, reload and health wait
    assert 160 + 6 + 58 + 20 + 17 <= refresher.worst_case_seconds(event("11")) <= 160 + 6 + 60 + 20 + 17


class Unreachable(FakeApi):
    """An API server that does not answer the first ``misses`` requests."""

    def __init__(self, misses: int) -> None:
        super().__init__()
        self.misses = misses

    def get(self, kind: str, namespace: str, name: str, *, not_older_than: str | None = None
            ) -> dict[str, Any]:
        if self.misses > 0:
            self.misses -= 1
            self.calls += 1
            raise ServerError(f"GET {kind} {namespace}/{name}: timed out")
        return super().get(kind, namespace, name, not_older_than=not_older_than)


def test_an_event_keeps_retrying_an_unanswering_api_server_until_its_deadline(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = Unreachable(misses=0)
    api.put("cfg", "10", a="1")
    slept: list[float] = []
    refresher = Refresher(settings, api, Store(tmp_path), Metrics(), sleep=slept.append,
                          retry_delays=(0.1, 0.2), max_fetch_wait=100)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    api.misses = 10  # a brownout: the initial schedule (3 attempts) and 7 more fail

    ack = refresher.handle(event("11"), now(), 0.0)

    assert ack.result is AckResult.OK
    assert slept == [0.1, 0.2] + [5.0] * 8


def test_a_missing_object_is_not_retried_past_the_short_schedule(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    slept: list[float] = []
    refresher = Refresher(settings, api, Store(tmp_path), Metrics(), sleep=slept.append,
                          retry_delays=(0.1, 0.2), max_fetch_wait=100)

    ack = refresher.handle(event("11"), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert "not found" in (ack.error or "")
    assert slept == [0.1, 0.2]


def test_an_api_that_stays_behind_the_events_version_fails_the_refresh(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")

    ack = refresher.handle(event("12"), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "resourceVersion 10" in ack.error
    assert api.calls == 1 + 4  # the sync, then one try and three retries
    assert reloads.calls == 0


def test_a_failed_reload_is_retried_by_the_next_sync_not_immediately(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    reloads.fail = "no process matches /app/"

    ack = refresher.handle(event("11"), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert ack.error == "config written, but the reload failed: no process matches /app/"
    assert reloads.calls == 1
    reloads.fail = None
    assert refresher.sync("retry").result is AckResult.OK
    assert reloads.calls == 2
    assert refresher.sync("periodic").result is AckResult.UNCHANGED
    assert reloads.calls == 2


def test_a_source_the_pod_does_not_manage_is_refused(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    refresher = make(settings, FakeApi(), tmp_path)

    for bad in (event(name="other"), event(namespace="elsewhere")):
        ack = refresher.handle(bad, now(), 0.0)
        assert ack.result is AckResult.FAILED
        assert ack.error is not None
        assert "not managed by this pod's sidecar" in ack.error


def test_a_missing_configmap_fails_and_keeps_the_files(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    del api.objects[("ConfigMap", "cfg")]

    ack = refresher.handle(event(), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert ack.error == "ConfigMap shop/cfg not found"
    assert ack.config_hash is not None  # what is still applied
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "1"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (Target(scope=Scope.ALL), True),
        (Target(scope=Scope.NAMESPACE, namespace="shop"), True),
        (Target(scope=Scope.NAMESPACE, namespace="other"), False),
        (Target(scope=Scope.POD, namespace="shop", name="orders-1"), True),
        (Target(scope=Scope.POD, namespace="shop", name="orders-2"), False),
        (Target(scope=Scope.WORKLOAD, namespace="shop", kind="Deployment", name="orders"), True),
        (Target(scope=Scope.WORKLOAD, namespace="shop", kind="StatefulSet", name="orders"), False),
    ],
)
def test_addressed_to(target: Target, expected: bool) -> None:
    me = PodIdentity(namespace="shop", pod="orders-1", workload_kind="Deployment", workload_name="orders")
    t = now()
    e = RefreshEvent(id="e", origin="o", target=target, sources=(Source(SourceKind.CONFIGMAP, "c", "shop"),),
                     issued_at=t, deadline=t)
    assert addressed_to(e, me) is expected


def test_rv_older_compares_etcd_revisions_only() -> None:
    assert rv_older("9", "10")
    assert not rv_older("10", "10")
    assert not rv_older("11", "10")
    assert not rv_older("abc", "10")
    assert not rv_older("9", None)


def keyed_event(keys: tuple[str, ...] | None, rv: str, event_id: str, *more: Source) -> RefreshEvent:
    t = now()
    return RefreshEvent(id=event_id, origin="test", target=Target(scope=Scope.ALL),
                        sources=(Source(SourceKind.CONFIGMAP, "cfg", "shop", rv, keys), *more),
                        issued_at=t, deadline=t + timedelta(minutes=1))


def test_keys_whose_content_is_already_applied_ack_unchanged_without_writing_or_reloading(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1", b="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    data_before = (tmp_path / "configmap-cfg" / "..data").readlink()
    api.put("cfg", "11", a="2", b="1")  # only a changed

    ack = refresher.handle(keyed_event(("b",), "11", "e-b"), now(), 0.0)

    assert ack.result is AckResult.UNCHANGED
    assert reloads.calls == 0
    assert (tmp_path / "configmap-cfg" / "..data").readlink() == data_before  # nothing written
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "1"
    assert ack.config_hash == refresher._hash_on_disk([("ConfigMap", "cfg", None)])


@pytest.mark.parametrize("keys", [("a",), ("a", "b"), ("gone",), None])
def test_a_change_in_a_named_key_applies_the_whole_object_and_reloads_once(
    settings: Settings, reloads: Reloads, tmp_path: Path, keys: tuple[str, ...] | None
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1", b="1", gone="x")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2", b="2")  # a and b changed, "gone" removed

    ack = refresher.handle(keyed_event(keys, "11", "e-a"), now(), 0.0)

    assert ack.result is AckResult.OK
    assert reloads.calls == 1
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "2"
    assert (tmp_path / "configmap-cfg" / "b").read_text() == "2"  # the whole object


def test_keys_are_ignored_for_the_decision_when_another_source_without_keys_changed(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    settings = load({**_env_of(settings), podc.ENV_CONFIGMAPS: "cfg,other"})
    api = FakeApi()
    api.put("cfg", "10", a="1", b="1")
    api.put("other", "10", x="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2", b="1")
    api.put("other", "11", x="2")

    unchanged_keys = keyed_event(("b",), "11", "e-1", Source(SourceKind.CONFIGMAP, "other", "shop", "11"))
    ack = refresher.handle(unchanged_keys, now(), 0.0)

    assert ack.result is AckResult.OK
    assert reloads.calls == 1


def _env_of(settings: Settings) -> dict[str, str]:
    return {
        podc.ENV_NAMESPACE: settings.namespace, podc.ENV_POD_NAME: settings.pod_name,
        podc.ENV_BROKER_URLS: "amqp://x", podc.ENV_TARGET_DIR: str(settings.target_dir),
        podc.ENV_FETCH_JITTER: "0", podc.ENV_ACTION: "signal", podc.ENV_PROCESS: "app",
    }


def test_a_restarted_sidecar_over_the_current_content_neither_writes_nor_reloads(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    make(settings, api, tmp_path).sync("start-up")
    api.put("cfg", "11", a="2")
    make(settings, api, tmp_path).handle(event("11"), now(), 0.0)  # the previous process
    data = (tmp_path / "configmap-cfg" / "..data").readlink()
    reloads.calls = 0

    restarted = make(settings, api, tmp_path)  # new process, same emptyDir
    outcomes = [restarted.sync(why) for why in ("start-up", "connected", "periodic")]
    replay = restarted.handle(event("11", event_id="e-replayed"), now(), 0.0)

    assert [o.result for o in outcomes] == [AckResult.UNCHANGED] * 3
    assert replay.result is AckResult.UNCHANGED
    assert restarted.ready
    assert reloads.calls == 0
    assert (tmp_path / "configmap-cfg" / "..data").readlink() == data


class Crash(BaseException):
    """The process dying between the swap and the reload."""


def test_a_sidecar_that_died_between_the_swap_and_the_reload_is_followed_by_one_reload(
    settings: Settings, reloads: Reloads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    make(settings, api, tmp_path).sync("start-up")
    api.put("cfg", "11", a="2")

    def die(action: reload_mod.ReloadAction) -> str:
        raise Crash

    monkeypatch.setattr(reload_mod, "run", die)
    with pytest.raises(Crash):
        make(settings, api, tmp_path).handle(event("11"), now(), 0.0)
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "2"  # swapped, never reloaded
    monkeypatch.setattr(reload_mod, "run", reloads)

    restarted = make(settings, api, tmp_path)
    outcomes = [restarted.sync(why) for why in ("start-up", "connected", "periodic")]

    assert [o.result for o in outcomes] == [AckResult.OK, AckResult.UNCHANGED, AckResult.UNCHANGED]
    assert reloads.calls == 1
    assert make(settings, api, tmp_path).sync("start-up").result is AckResult.UNCHANGED  # recorded
    assert reloads.calls == 1


def test_without_a_loaded_marker_a_restart_over_current_content_does_not_reload(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    make(settings, api, tmp_path).sync("start-up")
    (tmp_path / ".loaded").unlink()  # e.g. written by a sidecar version without the marker

    assert make(settings, api, tmp_path).sync("start-up").result is AckResult.UNCHANGED
    assert reloads.calls == 0


def test_the_refresh_log_line_says_when_the_event_was_received_and_how_long_it_travelled(
    settings: Settings, reloads: Reloads, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``make bench-e2e`` places each sidecar's steps on the edit's time line from this line."""
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    ev = event("11")
    received = ev.issued_at + timedelta(milliseconds=25)

    with caplog.at_level("INFO", logger="refreshbus.sidecar"):
        refresher.handle(ev, received, 0.0)

    (line,) = [r for r in caplog.records if r.getMessage() == "refresh ok"]
    assert line.__dict__["delivered_ms"] == 25.0
    assert line.__dict__["received_at"] == received.isoformat()


def test_an_event_fetch_asks_for_at_least_its_version_and_a_sync_for_the_latest(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    """With the event's version the API server answers from its watch cache (no etcd read per
    pod when a whole fleet fetches at once); a sync, or a version that is no etcd revision,
    asks for the latest."""
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    refresher.handle(event("11"), now(), 0.0)
    api.put("cfg", "12", a="3")
    refresher.handle(event("not-a-revision", event_id="e-2"), now(), 0.0)

    assert api.asked == [None, "11", None]


# -- the release record (protocol 1.3) ------------------------------------------------------

RECORD = record_name("Deployment", "orders")


def put_record(api: FakeApi, accepted: dict[str, str], candidate: dict[str, str] | None = None,
               pods: tuple[str, ...] = (), *, revision: int = 1) -> None:
    """The record of Deployment orders: ConfigMap cfg at ``accepted`` (revision ``revision``)
    and, if given, at ``candidate`` (revision + 1) for ``pods``."""
    contents = {}
    versions = []
    for files in (accepted, candidate):
        if files is not None:
            raw = {k: v.encode() for k, v in files.items()}
            contents[content_hash("ConfigMap", "cfg", raw)] = raw
            versions.append({"ConfigMap/cfg": snapshot("ConfigMap", "cfg", raw)})
    release = Release("Deployment", "orders", Revision(revision, versions[0]), candidate=(
        None if candidate is None else Candidate(revision + 1, versions[1], pods=pods)))
    api.objects[("ConfigMap", RECORD)] = {"metadata": {"name": RECORD, "resourceVersion": "99"},
                                          **encode_record(release, contents)}


def released(rev: str | None = None, revision: int = 1, record: str = RECORD) -> RefreshEvent:
    return dataclasses.replace(event(rev), release=ReleaseRef(record, revision))


def test_a_record_pins_the_content_whatever_the_configmap_holds(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="bad")
    put_record(api, accepted={"a": "good"})
    refresher = make(settings, api, tmp_path)

    outcome = refresher.sync("start-up")

    assert outcome.result is AckResult.OK
    assert outcome.revision == 1
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "good"
    assert api.calls == 0  # the source the record names is not fetched
    assert "refreshbus_sidecar_release_revision 1" in refresher.metrics.render()
    # a plain event (no release) on a versioned workload: still the record, and acked with its revision
    ack = refresher.handle(event("10"), now(), 0.0)
    assert ack.result is AckResult.UNCHANGED
    assert ack.revision == 1
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "good"


def test_a_pod_listed_in_the_candidate_runs_it_and_the_others_the_accepted_one(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="new")
    put_record(api, accepted={"a": "old"}, candidate={"a": "new"}, pods=("orders-0",))
    refresher = make(settings, api, tmp_path)  # this pod is orders-1
    refresher.sync("start-up")
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "old"

    put_record(api, accepted={"a": "old"}, candidate={"a": "new"}, pods=("orders-0", "orders-1"))
    ack = refresher.handle(released("10", revision=2), now(), 0.0)

    assert ack.result is AckResult.OK
    assert ack.revision == 2
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "new"
    assert reloads.calls == 1


def test_a_rolled_back_pod_goes_back_to_the_accepted_content(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="new")
    put_record(api, accepted={"a": "old"}, candidate={"a": "new"}, pods=("orders-1",))
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "new"

    put_record(api, accepted={"a": "old"})  # rejected: the candidate is gone, the ConfigMap still bad
    ack = refresher.handle(released("10", revision=1), now(), 0.0)

    assert (ack.result, ack.revision) == (AckResult.OK, 1)
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "old"
    assert refresher.sync("periodic").result is AckResult.UNCHANGED  # and it stays there


def test_an_event_ahead_of_the_record_is_retried_then_fails_with_the_reason(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    put_record(api, accepted={"a": "1"})
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    before = api.record_calls

    ack = refresher.handle(released("10", revision=2), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert ack.error == f"release record {RECORD}: the API server still has revision 1, the event expects 2"
    assert ack.revision is None
    assert api.record_calls - before == 4  # one try and three retries


def test_an_event_for_a_record_that_is_not_there_fails(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")

    ack = refresher.handle(released("10"), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert ack.error == f"release record ConfigMap shop/{RECORD} not found"


def test_an_event_naming_another_workloads_record_fails(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")

    ack = refresher.handle(released("10", record="refreshbus-release-deployment-x"), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert ack.error is not None
    assert "names release record refreshbus-release-deployment-x" in ack.error


def test_an_unusable_record_keeps_the_current_config_and_says_why(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    put_record(api, accepted={"a": "1"})
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    api.objects[("ConfigMap", RECORD)]["data"]["release.json"] = '{"v": 9}'

    ack = refresher.handle(released("11"), now(), 0.0)
    synced = refresher.sync("periodic")

    assert ack.result is AckResult.FAILED
    assert ack.error == (f"unusable release record, keeping the current config: ConfigMap {RECORD}: "
                         "release.json: format v=9, this build reads v=1 only")
    assert synced.result is AckResult.FAILED
    assert synced.error == ack.error
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "1"
    assert reloads.calls == 0


def test_no_record_means_the_live_sources_and_acks_without_revision(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    assert refresher.sync("start-up").revision is None
    api.put("cfg", "11", a="2")

    ack = refresher.handle(event("11"), now(), 0.0)

    assert (ack.result, ack.revision) == (AckResult.OK, None)
    assert "revision" not in ack.to_json()
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "2"
    assert api.record_calls == 1  # looked for at the sync; the event skips a record that was not there


def test_an_unversioned_pods_event_costs_one_get_per_source_and_a_record_a_sync_found_is_followed(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    assert (api.calls, api.record_calls) == (1, 1)

    api.put("cfg", "11", a="2")
    assert refresher.handle(event("11"), now(), 0.0).result is AckResult.OK
    assert (api.calls, api.record_calls) == (2, 1)  # one GET, of the source

    put_record(api, accepted={"a": "2"})
    assert refresher.sync("periodic").revision == 1  # a sync always looks for the record
    assert api.record_calls == 2
    api.put("cfg", "12", a="not accepted")
    ack = refresher.handle(event("12", event_id="e-2"), now(), 0.0)  # no release

    assert (ack.result, ack.revision) == (AckResult.UNCHANGED, 1)
    assert api.record_calls == 3
    assert (tmp_path / "configmap-cfg" / "a").read_text() == "2"


def test_a_bare_pod_never_looks_for_a_record(settings: Settings, reloads: Reloads, tmp_path: Path) -> None:
    settings = load({**_env_of(settings), podc.ENV_CONFIGMAPS: "cfg"})  # no workload: kind Pod
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")

    assert refresher.handle(event("11"), now(), 0.0).result is AckResult.OK
    assert api.record_calls == 0


class NoRecordGrant(FakeApi):
    def get(self, kind: str, namespace: str, name: str, *, not_older_than: str | None = None
            ) -> dict[str, Any]:
        if name == RECORD:
            raise ForbiddenError(f"forbidden: cannot get ConfigMap {namespace}/{name}")
        return super().get(kind, namespace, name, not_older_than=not_older_than)


def test_a_record_the_sidecar_may_not_read_is_followed_live_but_an_event_requiring_it_fails(
    settings: Settings, reloads: Reloads, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = NoRecordGrant()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    with caplog.at_level("WARNING", logger="refreshbus.sidecar"):
        assert refresher.sync("start-up").result is AckResult.OK
        refresher.sync("periodic")
    assert [r.getMessage() for r in caplog.records].count(
        f"cannot read the release record, following the live sources: forbidden: cannot get ConfigMap "
        f"shop/{RECORD}") == 1  # once, not at every sync

    ack = refresher.handle(released("10"), now(), 0.0)

    assert ack.result is AckResult.FAILED
    assert ack.error == f"forbidden: cannot get ConfigMap shop/{RECORD}"


def test_a_managed_source_the_record_does_not_name_is_fetched_live(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    settings = load({**_env_of(settings), podc.ENV_CONFIGMAPS: "cfg,other", podc.ENV_SECRETS: "db",
                     podc.ENV_WORKLOAD_KIND: "Deployment", podc.ENV_WORKLOAD_NAME: "orders"})
    api = FakeApi()
    api.put("cfg", "10", a="live")
    api.put("other", "10", x="live")
    api.objects[("Secret", "db")] = {"metadata": {"name": "db"}, "data": {"p": "c2VjcmV0"}}
    put_record(api, accepted={"a": "pinned"})
    refresher = make(settings, api, tmp_path)

    assert refresher.sync("start-up").result is AckResult.OK

    assert (tmp_path / "configmap-cfg" / "a").read_text() == "pinned"
    assert (tmp_path / "configmap-other" / "x").read_text() == "live"
    assert (tmp_path / "secret-db" / "p").read_text() == "secret"


def test_a_redelivered_event_repeats_its_revision(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    put_record(api, accepted={"a": "1"})
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    put_record(api, accepted={"a": "2"}, revision=2)

    first = refresher.handle(released("10", revision=2), now(), 0.0)
    again = refresher.handle(released("10", revision=2), now(), 0.0)

    assert (first.result, first.revision) == (AckResult.OK, 2)
    assert (again.result, again.revision) == (AckResult.OK, 2)
