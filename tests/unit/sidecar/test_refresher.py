"""The refresh logic against a fake API (a dict) and a real temporary directory."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from refreshbus_sidecar import reload as reload_mod
from refreshbus_sidecar.config import Settings, load
from refreshbus_sidecar.delivery import Store
from refreshbus_sidecar.kubeapi import NotFoundError
from refreshbus_sidecar.metrics import Metrics
from refreshbus_sidecar.refresher import Refresher, addressed_to, rv_older
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult, RefreshEvent, Scope, Source, SourceKind, Target, now
from refreshbus_wire.routing import PodIdentity


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls = 0

    def put(self, name: str, rv: str, **data: str) -> None:
        self.objects[("ConfigMap", name)] = {"metadata": {"name": name, "resourceVersion": rv}, "data": data}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.calls += 1
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
    return Refresher(settings, api, Store(tmp_path), Metrics(), sleep=lambda s: None, retry_delays=(0, 0, 0))


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


def test_a_duplicate_event_id_is_unchanged_without_fetching(
    settings: Settings, reloads: Reloads, tmp_path: Path
) -> None:
    api = FakeApi()
    api.put("cfg", "10", a="1")
    refresher = make(settings, api, tmp_path)
    refresher.sync("start-up")
    api.put("cfg", "11", a="2")
    first = refresher.handle(event("11"), now(), 0.0)
    calls = api.calls

    again = refresher.handle(event("11"), now(), 0.0)

    assert again.result is AckResult.UNCHANGED
    assert again.config_hash == first.config_hash
    assert api.calls == calls
    assert reloads.calls == 1


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
