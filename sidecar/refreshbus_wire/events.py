"""The versioned JSON envelope for refresh events and acks.

Both the operator (publishes refresh events, consumes acks) and the sidecar (consumes
refresh events, publishes acks) use these types; there is no second copy anywhere.
Decoding never raises anything but :class:`ProtocolError`, so a consumer can log, count
and drop a bad message in one ``except`` clause.

Compatibility rule: the major version in ``v`` ("1.0") must match; minor versions only
add optional fields, and unknown fields are ignored on read.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

from refreshbus_wire.contract import HTTP_METHODS, SIGNALS, is_key, is_name

PROTOCOL_VERSION: Final = "1.3"
PROTOCOL_MAJOR: Final = 1
#: Larger bodies are refused before JSON parsing. Events never carry config content
#: (secrets never travel on the bus), so real ones are a few hundred bytes.
MAX_MESSAGE_BYTES: Final = 64 * 1024
CONTENT_TYPE: Final = "application/json"

#: Upper bound of an ack's identity token (a Kubernetes service-account JWT is 1-2 KB).
MAX_IDENTITY_TOKEN_CHARS: Final = 8192
#: The audience of the projected service-account token a sidecar proves its pod with: a
#: token minted for it is refused by the API server for anything else (docs/protocol.md).
ACK_TOKEN_AUDIENCE: Final = "refreshbus.io/ack"


class ProtocolError(ValueError):
    """A message that is not a valid refreshbus message; the text says why."""


class EventType(StrEnum):
    REFRESH = "refresh"
    ACK = "ack"


class Scope(StrEnum):
    """How far an event reaches; mirrors the routing keys in :mod:`refreshbus_wire.routing`."""

    POD = "pod"
    WORKLOAD = "workload"
    NAMESPACE = "namespace"
    ALL = "all"


class AckResult(StrEnum):
    OK = "ok"  # new content written and the app reloaded
    UNCHANGED = "unchanged"  # content hash already applied: nothing written, no reload
    FAILED = "failed"  # see Ack.error; the previous config is still in place


class SourceKind(StrEnum):
    CONFIGMAP = "ConfigMap"
    SECRET = "Secret"


@dataclass(frozen=True, slots=True)
class Target:
    """Whom an event is addressed to, as resolved by the operator."""

    scope: Scope
    namespace: str | None = None
    kind: str | None = None  # workload kind, for Scope.WORKLOAD
    name: str | None = None  # pod name (POD) or workload name (WORKLOAD)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": self.scope.value}
        for key in ("namespace", "kind", "name"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: Any) -> Target:
        obj = _obj(data, "target")
        scope = _enum(Scope, obj.get("scope"), "target.scope")
        target = cls(
            scope=scope,
            namespace=_opt_str(obj, "namespace", "target"),
            kind=_opt_str(obj, "kind", "target"),
            name=_opt_str(obj, "name", "target"),
        )
        required = {
            Scope.POD: ("namespace", "name"),
            Scope.WORKLOAD: ("namespace", "kind", "name"),
            Scope.NAMESPACE: ("namespace",),
            Scope.ALL: (),
        }[scope]
        for key in required:
            if getattr(target, key) is None:
                raise ProtocolError(f"target.{key} is required for scope {scope.value!r}")
        return target


@dataclass(frozen=True, slots=True)
class Source:
    """One ConfigMap or Secret the refresh is about, at the version the operator saw."""

    kind: SourceKind
    name: str
    namespace: str
    #: resourceVersion the operator observed; a sidecar that reads an older one retries.
    resource_version: str | None = None
    #: Only a change in these keys counts (protocol 1.1); ``None`` = every key. When none of
    #: these keys differ from what it applied, the sidecar acks ``unchanged`` and neither
    #: writes nor reloads; otherwise it applies the whole object and reloads.
    keys: tuple[str, ...] | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind.value}/{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "name": self.name, "namespace": self.namespace}
        if self.resource_version is not None:
            out["resourceVersion"] = self.resource_version
        if self.keys is not None:
            out["keys"] = list(self.keys)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Source:
        obj = _obj(data, "sources[]")
        return cls(
            kind=_enum(SourceKind, obj.get("kind"), "sources[].kind"),
            name=_k8s_name(obj, "name", "sources[]"),
            namespace=_k8s_name(obj, "namespace", "sources[]"),
            resource_version=_opt_str(obj, "resourceVersion", "sources[]"),
            keys=_keys(obj.get("keys")),
        )


@dataclass(frozen=True, slots=True)
class Action:
    """How the app is told to reload. ``None`` on an event means: what the pod says."""

    type: str  # "signal" | "http" | "none"
    signal: str | None = None
    method: str | None = None
    port: int | None = None
    path: str | None = None
    timeout_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "signal":
            out["signal"] = self.signal
        elif self.type == "http":
            out.update(method=self.method, port=self.port, path=self.path)
            if self.timeout_seconds is not None:
                out["timeoutSeconds"] = self.timeout_seconds
        return out

    @classmethod
    def from_json(cls, data: Any) -> Action:
        obj = _obj(data, "action")
        kind = obj.get("type")
        if kind == "none":
            return cls(type="none")
        if kind == "signal":
            sig = obj.get("signal")
            if not isinstance(sig, str) or sig not in SIGNALS:  # a list or object is unhashable
                raise ProtocolError(f"action.signal must be one of {sorted(SIGNALS)}, got {sig!r}")
            return cls(type="signal", signal=sig)
        if kind == "http":
            method, port, path = obj.get("method"), obj.get("port"), obj.get("path")
            if not isinstance(method, str) or method not in HTTP_METHODS:
                raise ProtocolError(f"action.method must be one of {sorted(HTTP_METHODS)}, got {method!r}")
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise ProtocolError(f"action.port must be an integer 1..65535, got {port!r}")
            if not isinstance(path, str) or not path.startswith("/"):
                raise ProtocolError(f"action.path must start with '/', got {path!r}")
            timeout = obj.get("timeoutSeconds")
            if timeout is not None and (
                not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 60
            ):
                raise ProtocolError(f"action.timeoutSeconds must be in (0, 60], got {timeout!r}")
            return cls(type="http", method=method, port=port, path=path, timeout_seconds=timeout)
        raise ProtocolError(f"action.type must be 'signal', 'http' or 'none', got {kind!r}")


@dataclass(frozen=True, slots=True)
class RefreshRef:
    """The ConfigRefresh object an event was published for (for logs and events)."""

    namespace: str
    name: str
    generation: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"namespace": self.namespace, "name": self.name}
        if self.generation is not None:
            out["generation"] = self.generation
        return out

    @classmethod
    def from_json(cls, data: Any) -> RefreshRef:
        obj = _obj(data, "refresh")
        generation = obj.get("generation")
        if generation is not None and (not isinstance(generation, int) or isinstance(generation, bool)):
            raise ProtocolError("refresh.generation must be an integer")
        return cls(
            namespace=_k8s_name(obj, "namespace", "refresh"),
            name=_k8s_name(obj, "name", "refresh"),
            generation=generation,
        )


@dataclass(frozen=True, slots=True)
class ReleaseRef:
    """Protocol 1.3: "apply what this release record says for you, revision ``revision`` or
    later" -- the record (refreshbus_wire.release), not the live ConfigMaps, is the truth."""

    name: str  # the record ConfigMap, in the pod's namespace
    revision: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.revision}

    @classmethod
    def from_json(cls, data: Any) -> ReleaseRef:
        obj = _obj(data, "release")
        return cls(name=_k8s_name(obj, "name", "release"),
                   revision=_revision(obj.get("revision"), "release.revision"))


@dataclass(frozen=True, slots=True)
class RefreshEvent:
    """Operator → sidecars: fetch these sources now, swap them in, reload, ack."""

    id: str
    origin: str
    target: Target
    sources: tuple[Source, ...]
    issued_at: datetime
    deadline: datetime
    action: Action | None = None
    refresh: RefreshRef | None = None
    #: Protocol 1.3: the workload's release record and the revision it must at least be at.
    release: ReleaseRef | None = None

    type: EventType = field(default=EventType.REFRESH, init=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "type": self.type.value,
            "id": self.id,
            "origin": self.origin,
            "issuedAt": _fmt_time(self.issued_at),
            "deadline": _fmt_time(self.deadline),
            "target": self.target.to_json(),
            "sources": [s.to_json() for s in self.sources],
        }
        if self.action is not None:
            out["action"] = self.action.to_json()
        if self.refresh is not None:
            out["refresh"] = self.refresh.to_json()
        if self.release is not None:
            out["release"] = self.release.to_json()
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RefreshEvent:
        sources_raw = obj.get("sources")
        if not isinstance(sources_raw, list) or not sources_raw:
            raise ProtocolError("sources must be a non-empty list")
        if len(sources_raw) > 64:
            raise ProtocolError(f"too many sources ({len(sources_raw)} > 64)")
        sources = tuple(Source.from_json(s) for s in sources_raw)
        if len({s.ref for s in sources}) != len(sources):
            raise ProtocolError("sources contains duplicates")
        action = obj.get("action")
        refresh = obj.get("refresh")
        release = obj.get("release")
        return cls(
            id=_event_id(obj, "id"),
            origin=_req_str(obj, "origin"),
            target=Target.from_json(obj.get("target")),
            sources=sources,
            issued_at=_time(obj, "issuedAt"),
            deadline=_time(obj, "deadline"),
            action=None if action is None else Action.from_json(action),
            refresh=None if refresh is None else RefreshRef.from_json(refresh),
            release=None if release is None else ReleaseRef.from_json(release),
        )


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds from receiving the event to each step (None: step not reached)."""

    written_ms: float | None = None
    reloaded_ms: float | None = None

    def to_json(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.written_ms is not None:
            out["writtenMs"] = round(self.written_ms, 3)
        if self.reloaded_ms is not None:
            out["reloadedMs"] = round(self.reloaded_ms, 3)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Timings:
        obj = _obj(data, "timings")
        values: list[float | None] = []
        for key in ("writtenMs", "reloadedMs"):
            value = obj.get(key)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise ProtocolError(f"timings.{key} must be a number")
            values.append(None if value is None else float(value))
        return cls(written_ms=values[0], reloaded_ms=values[1])


@dataclass(frozen=True, slots=True)
class Ack:
    """Sidecar → operator: what happened to one event in one pod."""

    id: str
    event_id: str
    namespace: str
    pod: str
    result: AckResult
    received_at: datetime
    config_hash: str | None = None
    timings: Timings = field(default_factory=Timings)
    error: str | None = None
    #: The sending pod's projected service-account token (audience ACK_TOKEN_AUDIENCE,
    #: protocol 1.2): the operator checks with a TokenReview that it belongs to ``pod``.
    #: Kept out of repr so it never reaches a log line.
    identity_token: str | None = field(default=None, repr=False)
    #: Protocol 1.3: the release-record revision the pod now runs (None: no record, or an
    #: older sidecar).
    revision: int | None = None

    type: EventType = field(default=EventType.ACK, init=False)

    #: Errors are capped so one verbose failure cannot blow the message size.
    MAX_ERROR_CHARS = 1024

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "type": self.type.value,
            "id": self.id,
            "eventId": self.event_id,
            "origin": f"{self.namespace}/{self.pod}",
            "pod": {"namespace": self.namespace, "name": self.pod},
            "result": self.result.value,
            "receivedAt": _fmt_time(self.received_at),
            "timings": self.timings.to_json(),
        }
        if self.config_hash is not None:
            out["configHash"] = self.config_hash
        if self.error is not None:
            out["error"] = self.error[: self.MAX_ERROR_CHARS]
        if self.identity_token is not None:
            out["identityToken"] = self.identity_token
        if self.revision is not None:
            out["revision"] = self.revision
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Ack:
        pod = _obj(obj.get("pod"), "pod")
        result = _enum(AckResult, obj.get("result"), "result")
        error = _opt_str(obj, "error", "ack")
        if result is AckResult.FAILED and not error:
            raise ProtocolError("a failed ack must say why (error)")
        timings = obj.get("timings")
        return cls(
            id=_event_id(obj, "id"),
            event_id=_event_id(obj, "eventId"),
            namespace=_k8s_name(pod, "namespace", "pod"),
            pod=_k8s_name(pod, "name", "pod"),
            result=result,
            received_at=_time(obj, "receivedAt"),
            config_hash=_opt_str(obj, "configHash", "ack"),
            timings=Timings() if timings is None else Timings.from_json(timings),
            error=None if error is None else error[: cls.MAX_ERROR_CHARS],
            identity_token=_identity_token(obj.get("identityToken")),
            revision=None if obj.get("revision") is None else _revision(obj["revision"], "revision"),
        )


Message = RefreshEvent | Ack


def new_id() -> str:
    """A fresh event/ack id (UUID4, as Spring Cloud Bus uses)."""
    return str(uuid.uuid4())


def now() -> datetime:
    """The current time, timezone-aware UTC (what every timestamp on the wire is)."""
    return datetime.now(UTC)


def encode(message: Message) -> bytes:
    """Serialise a message to the UTF-8 JSON body that goes on the wire."""
    body = json.dumps(message.to_json(), separators=(",", ":"), sort_keys=True).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(body)} bytes, more than the {MAX_MESSAGE_BYTES} allowed")
    return body


def decode(body: bytes | str) -> Message:
    """Parse and validate a wire message.

    Raises:
        ProtocolError: oversized, not JSON, wrong major version, unknown type, or a
            missing/invalid field. The message says which.
    """
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(body)} bytes, more than the {MAX_MESSAGE_BYTES} allowed")
    if isinstance(body, bytes):
        # Strictly: json.loads would also take UTF-16/32 bodies and UTF-8-encoded surrogates.
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"not valid UTF-8: {exc}") from None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    # ASCII digits, few of them: int() of thousands of digits raises a ValueError of its own.
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]{1,9}\.[0-9]{1,9}", version):
        raise ProtocolError(f"missing or malformed protocol version 'v': {version!r}")
    if int(version.split(".")[0]) != PROTOCOL_MAJOR:
        raise ProtocolError(f"unsupported protocol version {version} (this build speaks {PROTOCOL_MAJOR}.x)")
    kind = obj.get("type")
    if kind == EventType.REFRESH:
        return RefreshEvent.from_json(obj)
    if kind == EventType.ACK:
        return Ack.from_json(obj)
    raise ProtocolError(f"unknown message type {kind!r}")


# -- field helpers: each raises ProtocolError naming the field ---------------------------

_E = TypeVar("_E", bound=StrEnum)


def _obj(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where} must be an object")
    return data


def _req_str(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{where + '.' if where else ''}{key} is required and must be a non-empty string")
    if len(value) > 1024:
        raise ProtocolError(f"{where + '.' if where else ''}{key} is too long")
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    if obj.get(key) is None:
        return None
    return _req_str(obj, key, where)


def _k8s_name(obj: dict[str, Any], key: str, where: str) -> str:
    value = _req_str(obj, key, where)
    if not is_name(value):
        raise ProtocolError(f"{where}.{key} {value!r} is not a valid Kubernetes name")
    return value


def _keys(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list) or not 1 <= len(value) <= 64
        or not all(isinstance(k, str) and is_key(k) for k in value)
        or len(set(value)) != len(value)
    ):
        raise ProtocolError("sources[].keys must be 1..64 unique ConfigMap/Secret key names")
    return tuple(value)


#: A JWT: three base64url segments (the signature may be empty only in unsigned tokens,
#: which the API server never accepts anyway).
_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def _identity_token(value: Any) -> str | None:
    if value is None:
        return None
    # The value itself is never echoed: it is a credential (for our audience only, still).
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_IDENTITY_TOKEN_CHARS
        or not _JWT_RE.match(value)
    ):
        raise ProtocolError(
            f"identityToken must be a JWT (three base64url parts) of at most {MAX_IDENTITY_TOKEN_CHARS} chars"
        )
    return value


def _revision(value: Any, where: str) -> int:
    # At most 2**53: exact in every JSON reader.
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**53:
        raise ProtocolError(f"{where} must be a positive integer, got {value!r}")
    return value


def _event_id(obj: dict[str, Any], key: str) -> str:
    value = _req_str(obj, key)
    if len(value) > 128 or not re.fullmatch(r"[A-Za-z0-9._:-]+", value):
        raise ProtocolError(f"{key} {value!r} is not a valid id")
    return value


def _enum(cls: type[_E], value: Any, where: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ProtocolError(f"{where} must be one of: {allowed}; got {value!r}") from None


def parse_timestamp(raw: str) -> datetime:
    """An RFC 3339 timestamp with its timezone (the wire's and the release record's).

    Raises:
        ValueError: with the reason, for the caller to name the field.
    """
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"is not an RFC 3339 timestamp: {raw!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"must carry a timezone: {raw!r}")
    return parsed


def _time(obj: dict[str, Any], key: str) -> datetime:
    try:
        return parse_timestamp(_req_str(obj, key))
    except ValueError as exc:
        raise ProtocolError(f"{key} {exc}") from None


def _fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
