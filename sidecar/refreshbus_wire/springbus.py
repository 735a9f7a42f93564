"""Spring Cloud Bus events as they travel on RabbitMQ, and Spring's receiver-side matching.

The shapes were verified against Spring Boot 3.5 / Spring Cloud 2025.0 (bus 4.3) instances
(../shared/reference/spring-cloud-bus.md, "Verified on a running instance"): compact JSON,
``type`` = the simple class name, ``timestamp`` in epoch milliseconds, ``originService`` the
sender's bus id, ``destinationService`` an already expanded pattern, ``id`` any string that
acks echo as ``ackId``. Stdlib only: the operator's bridge uses it, and so can any tool.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from refreshbus_wire.destination import ant_match

#: The topic exchange every Spring Cloud Bus member declares (``spring.cloud.bus.destination``).
EXCHANGE = "springCloudBus"
#: What Spring publishes with (it means nothing to the receivers: they bind ``#``).
ROUTING_KEY = "springCloudBus"
CONTENT_TYPE = "application/json"
#: Larger bodies are refused before parsing (a Spring bus event is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
#: The Java class an ack names in ``event`` for a refresh (Spring resolves it with Class.forName).
REFRESH_EVENT_CLASS = "org.springframework.cloud.bus.event.RefreshRemoteApplicationEvent"


class BusEventType(StrEnum):
    REFRESH = "RefreshRemoteApplicationEvent"
    ACK = "AckRemoteApplicationEvent"
    ENVIRONMENT_CHANGE = "EnvironmentChangeRemoteApplicationEvent"
    SHUTDOWN = "ShutdownRemoteApplicationEvent"


class SpringBusError(ValueError):
    """A message on the Spring bus that is not a usable bus event. ``reason`` is a short,
    stable label for metrics (``malformed``, ``no_origin``, ``unknown_type``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BusEvent:
    """One ``RemoteApplicationEvent``. ``destination`` is ``None`` when the JSON had null or
    ``""`` (a broadcast for Spring); a missing ``destinationService`` keeps Spring's
    ``____transient_destination___:**`` default, which matches nobody."""

    type: BusEventType
    id: str
    origin: str
    destination: str | None
    timestamp: int | None = None
    ack_id: str | None = None
    ack_destination: str | None = None
    event: str | None = None


#: Spring's no-argument constructor default for a missing ``destinationService``.
TRANSIENT_DESTINATION = "____transient_destination___:**"


def decode(body: bytes) -> BusEvent:
    """Parse one message body. Raises :class:`SpringBusError` for anything Spring itself
    would not act on either (not JSON, unknown or missing ``type``, no ``originService``)."""
    if len(body) > MAX_BODY_BYTES:
        raise SpringBusError("malformed", f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        raw = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpringBusError("malformed", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SpringBusError("malformed", "not a JSON object")
    kind = raw.get("type")
    try:
        event_type = BusEventType(str(kind))
    except ValueError:
        raise SpringBusError("unknown_type", f"unknown event type {kind!r}") from None
    origin = raw.get("originService")
    if not isinstance(origin, str):
        # Spring's own receivers fail on it too (isFromSelf with a null pattern).
        raise SpringBusError("no_origin", "originService missing or not a string")
    destination = raw.get("destinationService", TRANSIENT_DESTINATION)
    if destination is not None and not isinstance(destination, str):
        raise SpringBusError("malformed", "destinationService is not a string")
    timestamp = raw.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int | float)):
        raise SpringBusError("malformed", "timestamp is not a number (epoch milliseconds)")
    event_id = raw.get("id")
    if not isinstance(event_id, str) or not event_id:
        # Spring would invent one per receiver: its acks could then never be matched.
        raise SpringBusError("malformed", "id missing or not a string")
    fields = {}
    for key in ("ackId", "ackDestinationService", "event"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise SpringBusError("malformed", f"{key} is not a string")
        fields[key] = value
    return BusEvent(
        type=event_type,
        id=event_id,
        origin=origin,
        destination=destination or None,
        timestamp=int(timestamp) if timestamp is not None else None,
        ack_id=fields["ackId"],
        ack_destination=fields["ackDestinationService"],
        event=fields["event"],
    )


def _millis() -> int:
    return int(time.time() * 1000)


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def encode_refresh(event_id: str, origin: str, destination: str) -> bytes:
    """A ``RefreshRemoteApplicationEvent`` as Spring writes it. ``destination`` goes on the
    wire as given: expand it first (:func:`refreshbus_wire.destination.expand`), receivers
    do not."""
    return _dump(
        {
            "type": BusEventType.REFRESH.value,
            "timestamp": _millis(),
            "originService": origin,
            "destinationService": destination,
            "id": event_id,
        }
    )


def encode_ack(ack_id: str, origin: str, ack_destination: str | None, event_id: str) -> bytes:
    """The ``AckRemoteApplicationEvent`` a Spring instance sends after a refresh of ``ack_id``."""
    return _dump(
        {
            "type": BusEventType.ACK.value,
            "timestamp": _millis(),
            "originService": origin,
            "destinationService": "**",
            "id": event_id,
            "ackId": ack_id,
            "ackDestinationService": ack_destination,
            "event": REFRESH_EVENT_CLASS,
        }
    )


def for_self(destination: str | None, bus_id: str) -> bool:
    """Spring's ``PathServiceMatcher.isForSelf`` for a receiver with ``bus_id``: null or
    blank is a broadcast, else an Ant match with ``:`` -- and no sender-side expansion, so a
    hand-made ``orders`` matches nobody. The multi-profile retry needs a profile segment,
    which refreshbus instance ids (``<app>:<pod>``) never have."""
    if destination is None or not destination.strip():
        return True
    return ant_match(destination, bus_id)

