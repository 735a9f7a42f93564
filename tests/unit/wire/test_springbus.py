"""The Spring Cloud Bus codec and receiver-side matching, against the shapes verified on real
Spring Boot 3.5 / Spring Cloud 2025.0 instances (../shared/reference/spring-cloud-bus.md)."""

from __future__ import annotations

import json

import pytest
from refreshbus_wire import springbus as wire

#: Bodies exactly as a Spring instance sent them (reference, "Verified on a running instance").
SPRING_REFRESH = (b'{"type":"RefreshRemoteApplicationEvent","timestamp":1795221089122,'
                  b'"originService":"billing:8083:0f3c","destinationService":"orders:**",'
                  b'"id":"47907af8-a683-4ee0-9f2e-5132637a3c69"}')
SPRING_ACK = (b'{"type":"AckRemoteApplicationEvent","timestamp":1795221089179,'
              b'"originService":"orders:9000:5d1e","destinationService":"**","id":"4ab65b95","ackId":"47907af8-a683-4ee0-9f2e-5132637a3c69",'
              b'"ackDestinationService":"orders:**",'
              b'"event":"org.springframework.cloud.bus.event.RefreshRemoteApplicationEvent"}')


def test_a_spring_refresh_and_ack_decode():
    refresh = wire.decode(SPRING_REFRESH)
    assert refresh == wire.BusEvent(wire.BusEventType.REFRESH, "47907af8-a683-4ee0-9f2e-5132637a3c69",
                                    "billing:8083:0f3c", "orders:**", 1795221089122)
    ack = wire.decode(SPRING_ACK)
    assert (ack.type, ack.ack_id, ack.ack_destination, ack.event) == (
        wire.BusEventType.ACK, refresh.id, "orders:**", wire.REFRESH_EVENT_CLASS)


def test_what_we_send_has_springs_shape_and_field_order():
    refresh = json.loads(wire.encode_refresh("e1", "refreshbus-operator:op:ab", "orders:**"))
    assert list(refresh) == ["type", "timestamp", "originService", "destinationService", "id"]
    assert isinstance(refresh["timestamp"], int)
    ack = json.loads(wire.encode_ack("e1", "orders:orders-0", "orders:**", "a1"))
    assert list(ack) == ["type", "timestamp", "originService", "destinationService", "id", "ackId",
                         "ackDestinationService", "event"]
    assert (ack["destinationService"], ack["event"]) == ("**", wire.REFRESH_EVENT_CLASS)
    assert wire.decode(wire.encode_ack("e1", "o:1", None, "a1")).ack_destination is None


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "malformed"),
    (b"\xff\xfe", "malformed"),
    (b"[1]", "malformed"),
    (b'{"originService":"a:1","id":"1"}', "unknown_type"),
    (b'{"type":"org.springframework.cloud.bus.event.RefreshRemoteApplicationEvent",'
     b'"originService":"a:1"}', "unknown_type"),
    (b'{"type":"refreshremoteapplicationevent","originService":"a:1","id":"1"}', "unknown_type"),
    (b'{"type":"RefreshRemoteApplicationEvent","id":"1"}', "no_origin"),
    (b'{"type":"RefreshRemoteApplicationEvent","originService":null,"id":"1"}', "no_origin"),
    (b'{"type":"RefreshRemoteApplicationEvent","originService":"a:1"}', "malformed"),  # no id
    (b'{"type":"RefreshRemoteApplicationEvent","originService":"a:1","id":"1","timestamp":"now"}',
     "malformed"),
    (b'{"type":"RefreshRemoteApplicationEvent","originService":"a:1","id":"1","destinationService":5}',
     "malformed"),
    (b'{"type":"AckRemoteApplicationEvent","originService":"a:1","id":"1","ackId":7}', "malformed"),
    (b" " * (wire.MAX_BODY_BYTES + 1), "malformed"),
])
def test_what_spring_would_not_act_on_is_refused_with_a_reason(body, reason):
    with pytest.raises(wire.SpringBusError) as caught:
        wire.decode(body)
    assert caught.value.reason == reason


def test_destination_defaults_as_springs_no_arg_constructor():
    base = {"type": "RefreshRemoteApplicationEvent", "originService": "a:1", "id": "1"}
    assert wire.decode(json.dumps(base).encode()).destination == wire.TRANSIENT_DESTINATION
    for broadcast in (None, ""):
        assert wire.decode(json.dumps({**base, "destinationService": broadcast}).encode()).destination is None
    # Unknown fields and a float timestamp are accepted (Boot's ObjectMapper), as are other types.
    event = wire.decode(json.dumps({**base, "timestamp": 1.5, "extra": {"x": 1}}).encode())
    assert event.timestamp == 1
    change = {**base, "type": "EnvironmentChangeRemoteApplicationEvent", "values": {"a": "b"}}
    assert wire.decode(json.dumps(change).encode()).type is wire.BusEventType.ENVIRONMENT_CHANGE


@pytest.mark.parametrize(("destination", "bus_id", "expected"), [
    (None, "orders:orders-0", True),                  # null/blank: broadcast
    ("  ", "orders:orders-0", True),
    ("**", "orders:orders-0", True),
    ("orders:**", "orders:orders-0", True),
    ("orders", "orders:orders-0", False),             # receivers do not expand
    ("orders:orders-0", "orders:orders-0", True),
    ("orders:orders-?", "orders:orders-1", True),
    ("orders:orders-*", "orders:orders-12", True),
    ("Orders:**", "orders:orders-0", False),          # case-sensitive
    ("orders:dev:**", "orders:orders-0", False),      # a profile segment refreshbus ids never have
    ("orders-api:**", "orders:orders-0", False),
    ("ord*:**", "orders:orders-0", True),
    (wire.TRANSIENT_DESTINATION, "orders:orders-0", False),
])
def test_receiver_side_matching_follows_spring(destination, bus_id, expected):
    assert wire.for_self(destination, bus_id) is expected
