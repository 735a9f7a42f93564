"""The wire envelope: what is accepted, what is refused, and that refusal is always a
ProtocolError (never a crash) — examples first, then properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refreshbus_wire import (
    MAX_MESSAGE_BYTES,
    Ack,
    AckResult,
    Action,
    ProtocolError,
    RefreshEvent,
    RefreshRef,
    ReleaseRef,
    Scope,
    Source,
    SourceKind,
    Target,
    Timings,
    decode,
    encode,
    new_id,
)

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def refresh_event(**overrides: Any) -> RefreshEvent:
    fields: dict[str, Any] = {
        "id": new_id(),
        "origin": "refreshbus-operator/op-0",
        "target": Target(Scope.WORKLOAD, namespace="shop", kind="Deployment", name="orders"),
        "sources": (Source(SourceKind.CONFIGMAP, "orders-config", "shop", resource_version="42"),),
        "issued_at": T0,
        "deadline": T0 + timedelta(seconds=60),
    }
    fields.update(overrides)
    return RefreshEvent(**fields)


def wire(event: RefreshEvent | Ack) -> dict[str, Any]:
    return json.loads(encode(event))


def test_refresh_event_round_trips_with_every_optional_field() -> None:
    event = refresh_event(
        action=Action("http", method="POST", port=8080, path="/-/reload", timeout_seconds=5),
        refresh=RefreshRef("shop", "orders-refresh", generation=3),
        release=ReleaseRef("refreshbus-release-deployment-orders", 4),
    )
    assert decode(encode(event)) == event
    assert wire(event)["release"] == {"name": "refreshbus-release-deployment-orders", "revision": 4}


def test_ack_round_trips() -> None:
    ack = Ack(
        id=new_id(),
        event_id=new_id(),
        namespace="shop",
        pod="orders-7d9f-abc",
        result=AckResult.OK,
        received_at=T0,
        config_hash="sha256:abc",
        timings=Timings(written_ms=1.5, reloaded_ms=3.25),
    )
    assert decode(encode(ack)) == ack


def test_envelope_carries_version_type_and_camel_case_fields() -> None:
    body = wire(refresh_event())
    assert body["v"] == "1.3"
    assert body["type"] == "refresh"
    assert body["issuedAt"] == "2026-11-21T12:00:00.000Z"
    assert body["sources"][0] == {
        "kind": "ConfigMap",
        "name": "orders-config",
        "namespace": "shop",
        "resourceVersion": "42",
    }


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    body = wire(refresh_event())
    body["somethingNew"] = {"added": "in 1.1"}
    body["v"] = "1.7"
    assert isinstance(decode(json.dumps(body)), RefreshEvent)


def _mutated(change: Any) -> bytes:
    body = wire(refresh_event())
    change(body)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (_mutated(lambda b: b.update(v="2.0")), "unsupported protocol version 2.0"),
        (_mutated(lambda b: b.pop("v")), "protocol version"),
        (_mutated(lambda b: b.update(v=1)), "protocol version"),
        (_mutated(lambda b: b.update(type="shutdown")), "unknown message type 'shutdown'"),
        (_mutated(lambda b: b.pop("id")), "id is required"),
        (_mutated(lambda b: b.update(id="has spaces")), "not a valid id"),
        (_mutated(lambda b: b.pop("sources")), "sources must be a non-empty list"),
        (_mutated(lambda b: b.update(sources=[])), "sources must be a non-empty list"),
        (_mutated(lambda b: b["sources"].append(dict(b["sources"][0]))), "duplicates"),
        (_mutated(lambda b: b["sources"][0].update(kind="Pod")), "sources[].kind must be one of"),
        (_mutated(lambda b: b["sources"][0].update(name="Not_A_Name")), "not a valid Kubernetes name"),
        (_mutated(lambda b: b["sources"][0].update(keys=[])), "sources[].keys must be 1..64 unique"),
        (_mutated(lambda b: b["sources"][0].update(keys=["a", "a"])), "keys must be 1..64 unique"),
        (_mutated(lambda b: b["sources"][0].update(keys=["../etc"])), "keys must be 1..64 unique"),
        (_mutated(lambda b: b["sources"][0].update(keys=[".."])), "keys must be 1..64 unique"),
        (_mutated(lambda b: b.pop("target")), "target must be an object"),
        (_mutated(lambda b: b["target"].update(scope="galaxy")), "target.scope must be one of"),
        (_mutated(lambda b: b["target"].pop("kind")), "target.kind is required for scope 'workload'"),
        (_mutated(lambda b: b.update(issuedAt="yesterday")), "not an RFC 3339 timestamp"),
        (_mutated(lambda b: b.update(deadline="2026-11-21T12:00:00")), "must carry a timezone"),
        (_mutated(lambda b: b.update(action={"type": "signal", "signal": "SIGKILL"})), "action.signal"),
        (
            _mutated(lambda b: b.update(action={"type": "http", "method": "POST", "port": 0, "path": "/"})),
            "action.port",
        ),
        (
            _mutated(lambda b: b.update(action={"type": "http", "method": "POST", "port": 80, "path": "x"})),
            "action.path",
        ),
        (_mutated(lambda b: b.update(action={"type": "exec"})), "action.type"),
    ],
)
def test_malformed_messages_are_rejected_with_a_clear_reason(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode(body)


def test_oversized_message_is_rejected_before_parsing() -> None:
    body = b'{"v":"1.0","pad":"' + b"x" * MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(ProtocolError, match="more than the 65536 allowed"):
        decode(body)


def test_encoding_refuses_to_produce_an_oversized_message() -> None:
    sources = tuple(Source(SourceKind.SECRET, f"s{i}-" + "x" * 240, "ns") for i in range(300))
    with pytest.raises(ProtocolError, match="more than the 65536 allowed"):
        encode(refresh_event(sources=sources))


def test_failed_ack_must_say_why() -> None:
    ack = wire(
        Ack(
            id=new_id(),
            event_id=new_id(),
            namespace="a",
            pod="b",
            result=AckResult.FAILED,
            received_at=T0,
            error="boom",
        )
    )
    ack.pop("error")
    with pytest.raises(ProtocolError, match="must say why"):
        decode(json.dumps(ack))


TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def ack_1_2(**overrides: Any) -> Ack:
    fields: dict[str, Any] = {
        "id": new_id(), "event_id": new_id(), "namespace": "shop", "pod": "orders-1",
        "result": AckResult.OK, "received_at": T0, "identity_token": TOKEN,
    }  # fmt: skip
    fields.update(overrides)
    return Ack(**fields)


def test_an_ack_carries_its_identity_token_and_never_shows_it_in_repr() -> None:
    ack = ack_1_2()
    assert wire(ack)["identityToken"] == TOKEN
    assert decode(encode(ack)) == ack
    assert TOKEN not in repr(ack)


def test_an_ack_without_identity_token_from_a_1_1_sidecar_still_decodes() -> None:
    body = wire(ack_1_2(identity_token=None))
    assert "identityToken" not in body
    body["v"] = "1.1"
    decoded = decode(json.dumps(body))
    assert isinstance(decoded, Ack)
    assert decoded.identity_token is None


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b", 42, "a.b.c" + "x" * 9000, "a.b.c d"])
def test_a_malformed_identity_token_is_refused_without_echoing_it(token: Any) -> None:
    body = wire(ack_1_2())
    body["identityToken"] = token
    with pytest.raises(ProtocolError, match="identityToken must be a JWT") as err:
        decode(json.dumps(body))
    assert str(token) not in str(err.value) or token == ""


def test_1_3_ack_carries_the_revision_the_pod_runs() -> None:
    ack = ack_1_2(revision=7)
    assert wire(ack)["revision"] == 7
    assert decode(encode(ack)) == ack
    assert "revision" not in wire(ack_1_2())


def test_1_2_messages_without_the_release_fields_still_decode() -> None:
    event_body = wire(refresh_event())
    ack_body = wire(ack_1_2())
    assert "release" not in event_body
    assert "revision" not in ack_body
    event_body["v"] = ack_body["v"] = "1.2"
    event = decode(json.dumps(event_body))
    ack = decode(json.dumps(ack_body))
    assert isinstance(event, RefreshEvent)
    assert event.release is None
    assert isinstance(ack, Ack)
    assert ack.revision is None


@pytest.mark.parametrize(("release", "message"), [
    ("x", "release must be an object"),
    ({"revision": 1}, "release.name is required"),
    ({"name": "Not_A_Name", "revision": 1}, "not a valid Kubernetes name"),
    ({"name": "r"}, "release.revision must be a positive integer"),
    ({"name": "r", "revision": 0}, "release.revision must be a positive integer"),
    ({"name": "r", "revision": True}, "release.revision must be a positive integer"),
    ({"name": "r", "revision": "3"}, "release.revision must be a positive integer"),
    ({"name": "r", "revision": 2**53 + 1}, "release.revision must be a positive integer"),
])
def test_a_malformed_release_reference_is_refused(release: Any, message: str) -> None:
    body = wire(refresh_event())
    body["release"] = release
    with pytest.raises(ProtocolError, match=message):
        decode(json.dumps(body))


@pytest.mark.parametrize("revision", [0, -1, 1.5, "2", False, [1]])
def test_a_malformed_ack_revision_is_refused(revision: Any) -> None:
    body = wire(ack_1_2())
    body["revision"] = revision
    with pytest.raises(ProtocolError, match="revision must be a positive integer"):
        decode(json.dumps(body))


def test_long_error_text_is_capped() -> None:
    ack = Ack(
        id=new_id(),
        event_id=new_id(),
        namespace="a",
        pod="b",
        result=AckResult.FAILED,
        received_at=T0,
        error="e" * 5000,
    )
    decoded = decode(encode(ack))
    assert isinstance(decoded, Ack)
    assert decoded.error is not None
    assert len(decoded.error) == Ack.MAX_ERROR_CHARS


# -- properties --------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=(t.microsecond // 1000) * 1000))
targets = st.one_of(
    st.builds(Target, st.just(Scope.POD), namespace=names, name=names),
    st.builds(
        Target,
        st.just(Scope.WORKLOAD),
        namespace=names,
        kind=st.sampled_from(["Deployment", "StatefulSet", "DaemonSet"]),
        name=names,
    ),
    st.builds(Target, st.just(Scope.NAMESPACE), namespace=names),
    st.just(Target(Scope.ALL)),
)
sources = st.lists(
    st.builds(
        Source,
        st.sampled_from(list(SourceKind)),
        names,
        names,
        resource_version=st.none() | st.integers(1, 10**12).map(str),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda s: s.ref,
).map(tuple)
actions = st.none() | st.one_of(
    st.just(Action("none")),
    st.sampled_from(["SIGHUP", "SIGUSR1", "SIGUSR2"]).map(lambda s: Action("signal", signal=s)),
    st.builds(
        Action,
        st.just("http"),
        method=st.sampled_from(["GET", "POST", "PUT"]),
        port=st.integers(1, 65535),
        path=st.from_regex(r"/[a-z/-]{0,20}", fullmatch=True),
        timeout_seconds=st.none() | st.integers(1, 60).map(float),
    ),
)
events = st.builds(
    RefreshEvent,
    id=st.uuids().map(str),
    origin=st.text(min_size=1, max_size=50),
    target=targets,
    sources=sources,
    issued_at=times,
    deadline=times,
    action=actions,
    refresh=st.none() | st.builds(RefreshRef, names, names, generation=st.none() | st.integers(1, 10**6)),
    release=st.none() | st.builds(ReleaseRef, names, st.integers(1, 2**53)),
)
acks = st.builds(
    Ack,
    id=st.uuids().map(str),
    event_id=st.uuids().map(str),
    namespace=names,
    pod=names,
    result=st.sampled_from([AckResult.OK, AckResult.UNCHANGED]),
    received_at=times,
    config_hash=st.none() | st.text(min_size=1, max_size=70),
    timings=st.builds(
        Timings,
        written_ms=st.none() | st.integers(0, 10**6).map(float),
        reloaded_ms=st.none() | st.integers(0, 10**6).map(float),
    ),
    revision=st.none() | st.integers(1, 2**53),
)


@given(events)
def test_every_valid_refresh_event_round_trips(event: RefreshEvent) -> None:
    assert decode(encode(event)) == event


@given(acks)
def test_every_valid_ack_round_trips(ack: Ack) -> None:
    assert decode(encode(ack)) == ack


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_decoder(body: bytes) -> None:
    try:
        message = decode(body)
    except ProtocolError as exc:
        assert str(exc), "every refusal says why"
    else:
        assert decode(encode(message)) == message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    events,
    st.sampled_from(
        ["id", "origin", "target", "sources", "issuedAt", "deadline", "action", "refresh", "v", "type"]
    ),
    json_values,
)
def test_any_corrupted_field_is_either_accepted_or_a_protocol_error(
    event: RefreshEvent, field: str, value: Any
) -> None:
    body = wire(event)
    body[field] = value
    try:
        decoded = decode(json.dumps(body))
    except ProtocolError:
        return
    # If it was accepted, it must be a well-formed message that encodes again.
    assert decode(encode(decoded)) == decoded


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a wire message, nested fields included."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    out = [path] if path else []
    for key, value in items:
        out += _leaves(value, (*path, key))
    return out


@settings(max_examples=500)
@given(st.one_of(events, acks), st.data(), json_values)
def test_any_corrupted_nested_field_is_either_accepted_or_a_protocol_error(
    message: RefreshEvent | Ack, data: st.DataObject, value: Any
) -> None:
    body = wire(message)
    *parents, last = data.draw(st.sampled_from(_leaves(body)))
    holder: Any = body
    for step in parents:
        holder = holder[step]
    holder[last] = value
    try:
        decoded = decode(json.dumps(body))
    except ProtocolError:
        return
    # Accepted: it encodes again, and that encoding is stable (timings are rounded once).
    assert encode(decode(encode(decoded))) == encode(decoded)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"type": "signal", "signal": []}, "action.signal"),
        ({"type": "signal", "signal": {"SIGHUP": 1}}, "action.signal"),
        ({"type": "http", "method": ["POST"], "port": 80, "path": "/"}, "action.method"),
        ({"type": "http", "method": {}, "port": 80, "path": "/"}, "action.method"),
    ],
)
def test_an_unhashable_signal_or_method_is_a_protocol_error_not_a_crash(
    action: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode(_mutated(lambda b: b.update(action=action)))


@pytest.mark.parametrize("version", ["9" * 5000 + ".0", "1." + "0" * 5000, "\u0661.\u0660"])
def test_a_version_of_thousands_of_digits_or_non_ascii_digits_is_refused(version: str) -> None:
    with pytest.raises(ProtocolError, match="protocol version"):
        decode(_mutated(lambda b: b.update(v=version)))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_body_in_another_encoding_than_utf8_is_refused(encoding: str) -> None:
    body = json.dumps(wire(refresh_event())).encode(encoding)
    # without a BOM, UTF-16 ASCII text is valid UTF-8 (with NULs) but not JSON
    with pytest.raises(ProtocolError, match=r"not valid (UTF-8|JSON)"):
        decode(body)


def test_utf8_encoded_surrogates_are_refused() -> None:
    body = _mutated(lambda b: b.update(origin="op-SURROGATE")).replace(b"SURROGATE", b"\xed\xa0\x80")
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        decode(body)
