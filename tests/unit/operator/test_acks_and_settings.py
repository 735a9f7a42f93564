"""The ack router (decode, match by event id, count and drop the rest), the round
annotation codec, spec helpers and the configuration."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from refreshbus_operator import records, rounds, settings
from refreshbus_operator import status as st
from refreshbus_operator.acks import AckRouter
from refreshbus_wire import Ack, AckResult, RefreshEvent, Source, SourceKind, decode, encode, new_id, now


class Sink:
    def __init__(self) -> None:
        self.folded: list[str] = []

    def fold(self, ack: Ack, tag: tuple[int, int]) -> str:
        if ack.pod in self.folded:
            return "duplicate"
        self.folded.append(ack.pod)
        return "folded"


def ack(event_id: str, pod: str = "p0") -> bytes:
    return encode(
        Ack(id=new_id(), event_id=event_id, namespace="ns", pod=pod, result=AckResult.OK, received_at=now())
    )


def test_router_folds_known_events_and_settles_the_rest_at_once():
    settled: list[tuple[int, int]] = []
    router = AckRouter(settle=settled.extend, grace=5)
    sink = Sink()
    router.register("e1", sink)
    assert router.handle(ack("e1"), (1, 1)) == "folded"
    assert settled == []  # settled only once status is written
    assert router.handle(ack("e1"), (1, 2)) == "duplicate"
    assert router.handle(b"{nope", (1, 3)) == "malformed"
    assert router.handle(b'{"v":"2.0","type":"ack"}', (1, 4)) == "malformed"
    assert settled == [(1, 2), (1, 3), (1, 4)]


def test_router_parks_unknown_events_until_their_round_registers():
    settled: list[tuple[int, int]] = []
    router = AckRouter(settle=settled.extend, grace=5)
    assert router.handle(ack("e2"), (1, 1)) == "parked"
    sink = Sink()
    router.register("e2", sink)
    assert sink.folded == ["p0"]
    assert router.parked == {}


def test_router_drops_unknown_events_after_the_grace_period_and_late_acks_at_once():
    settled: list[tuple[int, int]] = []
    router = AckRouter(settle=settled.extend, grace=5)
    router.handle(ack("e3"), (1, 1))
    assert router.expire(time.monotonic() + 6) == 1
    assert settled == [(1, 1)]
    router.register("e4", Sink())
    router.unregister("e4")
    assert router.handle(ack("e4"), (1, 2)) == "late"


def test_router_parks_at_most_max_parked_acks_dropping_the_oldest_first():
    settled: list[tuple[int, int]] = []
    router = AckRouter(settle=settled.extend, grace=5, max_parked=3)
    for i in range(5):
        assert router.handle(ack(f"u{i}"), (1, i)) == "parked"
    assert settled == [(1, 0), (1, 1)]  # dropped as unknown_event to make room
    assert list(router.parked) == ["u2", "u3", "u4"]
    sink = Sink()
    router.register("u3", sink)  # a parked ack still reaches its round when it shows up
    assert sink.folded == ["p0"]
    router.handle(ack("u5"), (1, 5))
    router.handle(ack("u6"), (1, 6))
    assert settled == [(1, 0), (1, 1), (1, 2)]
    assert list(router.parked) == ["u4", "u5", "u6"]
    assert router.expire(time.monotonic() + 6) == 3
    assert router.parked == {}


def test_round_annotation_round_trip_is_compact():
    record = {"eventId": "e", "generation": 2, "targets": [f"orders-5d8f9c7b6-{i:05d}" for i in range(5000)]}
    encoded = records.encode_round(record)
    assert records.decode_round(encoded) == record
    assert len(encoded) < 64 * 1024
    assert records.decode_round("garbage!") is None
    assert records.decode_round(None) is None


def test_spec_helpers():
    spec = {
        "sources": [{"configMap": {"name": "a"}}, {"secret": {"name": "b", "keys": ["k"]}}],
        "action": {"http": {"port": 8080, "path": "/-/reload"}},
    }
    assert records.spec_sources(spec) == [("ConfigMap", "a"), ("Secret", "b")]
    action = records.spec_action(spec)
    assert action is not None
    assert (action.type, action.method, action.port, action.timeout_seconds) == ("http", "POST", 8080, 5)
    assert records.spec_action({"action": {"signal": {"name": "SIGUSR1"}}}).signal == "SIGUSR1"  # type: ignore[union-attr]
    assert records.spec_action({"action": {"none": {}}}).type == "none"  # type: ignore[union-attr]
    assert records.spec_action({}) is None


def test_spec_source_entries_carry_keys():
    spec = {
        "sources": [
            {"configMap": {"name": "a"}},
            {"secret": {"name": "b", "keys": ["password", "username"]}},
            {"configMap": {"name": "c", "keys": ["application.yaml"]}},
        ]
    }
    assert records.spec_source_entries(spec) == [
        ("ConfigMap", "a", None),
        ("Secret", "b", ("password", "username")),
        ("ConfigMap", "c", ("application.yaml",)),
    ]


def test_published_event_and_round_annotation_carry_source_keys():
    """spec.sources[].keys reach the wire (Source.keys) and survive a restart (the round
    annotation); an annotation written before keys existed still loads."""
    engine = SimpleNamespace(config=SimpleNamespace(instance="op-0"))
    spec = {
        "sources": [{"configMap": {"name": "a", "keys": ["x.yaml"]}}, {"secret": {"name": "b"}}],
        "target": {"pods": ["p0"]},
    }
    snap = st.Snapshot(generation=1, event_id="e1", start_time=now(), targets=frozenset({"p0"}))
    ref = records.ObjectRef("ns", "r", "uid")
    round_ = rounds.Round(engine, ref, 1, spec, snap)  # type: ignore[arg-type]
    round_.sources = [
        Source(SourceKind.CONFIGMAP, "a", "ns", "7", keys=("x.yaml",)),
        Source(SourceKind.SECRET, "b", "ns", "8"),
    ]
    ((_key, body),) = round_._messages(None)
    event = decode(body)
    assert isinstance(event, RefreshEvent)
    assert [(s.name, s.keys) for s in event.sources] == [("a", ("x.yaml",)), ("b", None)]
    assert json.loads(body)["sources"][0]["keys"] == ["x.yaml"]
    assert "keys" not in json.loads(body)["sources"][1]

    record = records.decode_round(records.encode_round(round_._round_record()))
    assert record is not None
    resumed = rounds.Round(engine, ref, 1, spec, snap, resumed=record)  # type: ignore[arg-type]
    resumed._load_sources(record["sources"])
    assert resumed.sources == round_.sources
    old = rounds.Round(engine, ref, 1, spec, snap)  # type: ignore[arg-type]
    old._load_sources([["ConfigMap", "a", "7"]])
    assert old.sources == [Source(SourceKind.CONFIGMAP, "a", "ns", "7")]


def test_config_from_env_and_overrides():
    env = {
        "REFRESHBUS_BROKER_URLS": "amqp://a, amqp://b",
        "REFRESHBUS_OPERATOR_NAMESPACES": "x y",
        "REFRESHBUS_OPERATOR_STATUS_FLUSH_INTERVAL": "0.5",
        "REFRESHBUS_OPERATOR_AUTO_REFRESH": "false",
    }
    config = settings.from_env(env, metrics_port=0, namespaces=None)
    assert config.broker_urls == ("amqp://a", "amqp://b")
    assert config.namespaces == ("x", "y")
    assert not config.clusterwide
    assert config.status_flush_interval == 0.5
    assert config.auto_refresh is False
    assert config.auto_refresh_secrets is False  # the default: Secrets are opt-in
    on = settings.from_env({"REFRESHBUS_OPERATOR_AUTO_REFRESH_SECRETS": "true"}, metrics_port=0)
    assert on.auto_refresh_secrets is True
    assert config.metrics_port == 0
    assert settings.from_env({}, namespaces=["q"]).namespaces == ("q",)
    with pytest.raises(ValueError, match="REFRESHBUS_OPERATOR_METRICS_PORT"):
        settings.from_env({"REFRESHBUS_OPERATOR_METRICS_PORT": "nope"})


@pytest.mark.parametrize("password", ["Xq7#zW9", "Xq7/zW9", "Xq7?zW9", "1234#zW9"])
def test_a_broker_url_that_does_not_parse_is_refused_without_quoting_the_password(password):
    # Unencoded, pika raised "Port could not be cast to integer value as 'Xq7'" on every
    # publish, and the publisher put that text in statuses, Events and logs.
    env = {"REFRESHBUS_BROKER_URLS": f"amqp://operator:{password}@rabbit:5672/%2F"}
    with pytest.raises(ValueError, match="not a valid amqp") as info:
        settings.from_env(env)
    assert "Xq7" not in str(info.value)
    assert "zW9" not in str(info.value)


def test_the_config_never_prints_broker_passwords():
    env = {"REFRESHBUS_BROKER_URLS": "amqp://operator:s3cr%40t@rabbit:5672/%2F,amqps://op:Pw2@r2/"}
    config = settings.from_env(env, metrics_port=0, broker_urls=None)
    assert config.broker_urls[0] == "amqp://operator:s3cr%40t@rabbit:5672/%2F"
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert "s3cr" not in text
        assert "Pw2" not in text
        assert "amqp://operator:***@rabbit:5672/%2F" in text
        assert "amqps://op:***@r2/" in text
        assert "metrics_port=0" in text


def test_kopf_settings_use_our_group():
    import kopf

    s = kopf.OperatorSettings()
    settings.apply_kopf_settings(s, settings.Config(priority=7))
    assert s.persistence.finalizer == "refreshbus.io/finalizer"
    assert s.peering.priority == 7
    assert s.persistence.progress_storage.prefix == "refreshbus.io"


def test_help_is_real(capsys):
    from refreshbus_operator.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "ConfigRefresh" in out
    assert "--peering" in out
    assert "REFRESHBUS_BROKER_URLS" in out
    assert "--auto-refresh-secrets" in out


def test_auto_refresh_secrets_flag_wins_over_the_environment(monkeypatch):
    from refreshbus_operator import __main__ as cli

    args = cli.parser().parse_args(["--auto-refresh-secrets"])
    assert args.auto_refresh_secrets is True
    assert cli.parser().parse_args([]).auto_refresh_secrets is None  # not given: env decides
    config = settings.from_env(
        {"REFRESHBUS_OPERATOR_AUTO_REFRESH_SECRETS": "false"}, auto_refresh_secrets=args.auto_refresh_secrets
    )
    assert config.auto_refresh_secrets is True


def test_peering_priority_is_distinct_per_replicaset_pod_and_stable():
    import random as rnd

    alphabet = settings.K8S_NAME_SUFFIX_ALPHABET
    gen = rnd.Random(7)
    suffixes = {"".join(gen.choice(alphabet) for _ in range(5)) for _ in range(20000)}
    old = [settings.priority_for(f"refreshbus-operator-7c9d8f6b5-{s}") for s in suffixes]
    # Pods of one ReplicaSet: the suffix is decoded exactly, so never two equal priorities.
    assert len(set(old)) == len(suffixes)
    assert all(1 <= p <= settings.MAX_PRIORITY for p in old)
    # Stable: the same pod always gets the same priority.
    assert settings.priority_for("refreshbus-operator-7c9d8f6b5-x2k4q") == settings.priority_for(
        "refreshbus-operator-7c9d8f6b5-x2k4q"
    )
    # The extremes of the suffix space stay in range and apart.
    lo = settings.priority_for("op-5d8f9c7b6-bbbbb")
    hi = settings.priority_for("op-5d8f9c7b6-99999")
    assert hi - lo == len(alphabet) ** 5 - 1
    # Two ReplicaSets (a rolling update): same suffix, different ReplicaSet -> (almost always)
    # different; here, for a fixed pair, checked outright.
    assert settings.priority_for("op-5d8f9c7b6-x2k4q") != settings.priority_for("op-6f7c8d9b4-x2k4q")
    # Other names (StatefulSet ordinals, names with letters outside the alphabet): 31-bit hash.
    others = [settings.priority_for(f"refreshbus-operator-{i}") for i in range(5000)]
    others += [settings.priority_for(n) for n in ("laptop", "op-abcde", "op-x2k4", "-bbbbb")]
    assert len(set(others)) == len(others)
    assert all(1 <= p <= settings.MAX_PRIORITY for p in others)


def test_effective_priority_explicit_then_pod_name_then_random():
    assert settings.Config(priority=5, pod_name="op-5d8f9c7b6-x2k4q").effective_priority() == 5
    named = settings.Config(pod_name="op-5d8f9c7b6-x2k4q")
    assert named.effective_priority() == settings.priority_for("op-5d8f9c7b6-x2k4q")
    drawn = {settings.Config().effective_priority() for _ in range(50)}
    assert all(1 <= p <= settings.MAX_PRIORITY for p in drawn)
    assert len(drawn) > 45  # random over 31 bits, not 15
    env = {"POD_NAME": "op-5d8f9c7b6-x2k4q"}
    assert settings.from_env(env).pod_name == "op-5d8f9c7b6-x2k4q"
    env["REFRESHBUS_OPERATOR_POD_NAME"] = "op-5d8f9c7b6-bbbbb"
    assert settings.from_env(env).pod_name == "op-5d8f9c7b6-bbbbb"
    assert settings.from_env({}).pod_name is None
