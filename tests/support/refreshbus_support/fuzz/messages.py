"""A seeded generator of bad bus messages: what a buggy or hostile peer can put on the
refreshbus exchange, sorted into categories, each with the counter that must count it.

One generator serves ``make fuzz`` (a million messages, bench/fuzz_bench.py) and the
short run in ``make test`` (tests/e2e/test_fuzz.py); both drive it through
:mod:`refreshbus_support.fuzz.harness`. The same seed gives the same sequence of
categories, mutations and bytes; only the ids of real refresh rounds (which the running
operator makes up) are filled in from :class:`Live` as the run goes.

Messages for the sidecar are valid refresh events mutated field by field (a required
field removed, a value of the wrong JSON type, a value of the right type that is not
allowed), truncated, oversized, not UTF-8, not JSON, nested too deep, from an unknown
protocol version, of an unknown type, acks on a refresh key, events for another pod,
replays of events it already handled and events for sources it does not manage.
Messages for the operator's ack queue are the same for acks, plus acks for events no
round knows, for finished rounds, from pods that are not targets, and duplicates (each
with the real identity token of the pod it speaks for, so it gets past the identity
check), and acks without a token, with a made-up one, or with another pod's (forged).

Which mutations are invalid is decided from the protocol (docs/protocol.md), not by
asking the decoder: tests/unit/fuzz checks that the decoder agrees with every one.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from refreshbus_wire import routing
from refreshbus_wire.events import MAX_MESSAGE_BYTES

SIDECAR_DROPPED = "refreshbus_sidecar_events_dropped_total"
SIDECAR_REFRESHES = "refreshbus_sidecar_refreshes_total"
SIDECAR_DUPLICATES = "refreshbus_sidecar_duplicate_events_total"
OPERATOR_ACKS = "refreshbus_operator_acks_total"
OPERATOR_IDENTITY = "refreshbus_operator_ack_identity_checks_total"


def series(name: str, **labels: str) -> str:
    """A metric series as both processes render it: ``name{label="value"}``."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


class To(StrEnum):
    SIDECAR = "sidecar"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    to: To
    #: Share of the messages (relative weight).
    weight: float
    #: The counter series each message of this category must add exactly 1 to, in the
    #: process it is sent to and, for valid events the sidecar answers, in the operator.
    counts: tuple[str, ...]
    about: str


@dataclass
class Live:
    """What the generator needs to know about the running system."""

    namespace: str
    #: The real sidecar's pod, its workload (kind, name).
    pod: str
    workload: tuple[str, str]
    #: A ConfigMap the sidecar manages (events naming it are real work; never generated).
    configmap: str
    #: The target of the anchor round that never answers, and a pod no round targets.
    silent_pod: str = ""
    other_pod: str = ""
    #: Real identity tokens (pod name -> token) of ``pod`` and ``other_pod``.
    tokens: dict[str, str] = field(default_factory=dict)
    #: Event id of a round kept in flight all along (the real pod answered it, another
    #: target never does): acks for it from other pods are ``not_target``, from the real
    #: pod ``duplicate``.
    anchor_event: str = ""
    #: Event ids of real rounds that finished (the real pod handled each of them).
    finished: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Message:
    category: Category
    routing_key: str
    body: bytes


_DROPPED_MALFORMED = (series(SIDECAR_DROPPED, reason="malformed"),)
_ACK_MALFORMED = (series(OPERATOR_ACKS, outcome="malformed"),)

_SHAPES = (
    ("truncated", "a valid message cut short at a random byte"),
    ("oversized", "a valid message padded past the 64 KiB limit (most by < 4 KiB, some to 256 KiB)"),
    ("not_utf8", "a valid message with invalid UTF-8 bytes in a string, or in UTF-16/32"),
    ("not_json", "random bytes or text, empty bodies"),
    ("not_object", "JSON that is not an object (array, string, number, null)"),
    ("too_deep", "JSON nested deeper than the parser's recursion limit"),
    ("missing_field", "a valid message with one required field removed"),
    ("wrong_type", "a valid message with one field of the wrong JSON type"),
    ("bad_value", "a valid message with one field of the right type and a value not allowed"),
    ("unknown_version", "a valid message from another major protocol version"),
    ("unknown_type", "a valid message whose type is neither refresh nor ack"),
)

#: Oversized messages are few: each one is 64 KiB on the wire, and the limit is checked first.
_WEIGHT = {"oversized": 1.0}

CATEGORIES: tuple[Category, ...] = (
    *(Category(f"event_{n}", To.SIDECAR, _WEIGHT.get(n, 4.0), _DROPPED_MALFORMED, about)
      for n, about in _SHAPES),
    Category("event_field_mutations", To.SIDECAR, 8.0, _DROPPED_MALFORMED,
             "missing_field, wrong_type or bad_value, walking every field of the event in turn"),
    Category("ack_on_refresh_key", To.SIDECAR, 3.0, (series(SIDECAR_DROPPED, reason="not-a-refresh"),),
             "a valid ack published under the sidecar's refresh routing keys"),
    Category("foreign_event", To.SIDECAR, 3.0, (series(SIDECAR_DROPPED, reason="foreign"),),
             "a valid event for another pod, workload or namespace, under this pod's keys"),
    Category("replayed_event", To.SIDECAR, 0.4,
             (series(SIDECAR_DUPLICATES), series(OPERATOR_ACKS, outcome="late")),
             "a real, finished event sent again: answered unchanged without work"),
    Category("unmanaged_source", To.SIDECAR, 0.4,
             (series(SIDECAR_REFRESHES, result="failed"), series(OPERATOR_ACKS, outcome="unknown_event")),
             "a valid event naming a ConfigMap the pod does not manage: answered failed"),
    *(Category(f"ack_{n}", To.OPERATOR, _WEIGHT.get(n, 4.0), _ACK_MALFORMED, about)
      for n, about in _SHAPES),
    Category("ack_field_mutations", To.OPERATOR, 8.0, _ACK_MALFORMED,
             "missing_field, wrong_type or bad_value, walking every field of the ack in turn"),
    Category("event_on_ack_key", To.OPERATOR, 3.0, _ACK_MALFORMED,
             "a valid refresh event published under an ack routing key"),
    Category("ack_unknown_event", To.OPERATOR, 3.0, (series(OPERATOR_ACKS, outcome="unknown_event"),),
             "a valid ack for an event id no round ever had"),
    Category("ack_finished_round", To.OPERATOR, 3.0, (series(OPERATOR_ACKS, outcome="late"),),
             "a valid ack for a real round that already finished"),
    Category("ack_not_target", To.OPERATOR, 3.0, (series(OPERATOR_ACKS, outcome="not_target"),),
             "a valid ack for the round in flight from a pod it does not target, with that pod's token"),
    Category("ack_forged", To.OPERATOR, 3.0,
             (series(OPERATOR_ACKS, outcome="refused"), series(OPERATOR_IDENTITY, result="forged")),
             "an ack speaking for another pod (the silent target of the round in flight, any pod) "
             "with a real token of the sending pod"),
    Category("ack_without_token", To.OPERATOR, 3.0,
             (series(OPERATOR_ACKS, outcome="refused"), series(OPERATOR_IDENTITY, result="missing")),
             "a valid ack of the real pod without an identity token"),
    Category("ack_bad_token", To.OPERATOR, 2.0,
             (series(OPERATOR_ACKS, outcome="refused"), series(OPERATOR_IDENTITY, result="invalid")),
             "a made-up token: not a readable JWT, or the right claims with no valid signature "
             "(a TokenReview each)"),
    Category("ack_duplicate", To.OPERATOR, 3.0, (series(OPERATOR_ACKS, outcome="duplicate"),),
             "a valid ack for the round in flight from the target that already answered, with its token"),
)
BY_NAME = {c.name: c for c in CATEGORIES}

# -- the protocol's fields, by kind: values of the wrong JSON type and values not allowed --

_ANY_TYPE: tuple[Any, ...] = (None, True, False, 0, 1, -7, 1.5, "x", [], [1], {}, {"a": 1})


def _wrong(*valid: type) -> tuple[Any, ...]:
    """The sample values whose JSON type is none of ``valid`` (bool is not a number here)."""
    out = []
    for value in _ANY_TYPE:
        if isinstance(value, bool):
            ok = bool in valid
        elif isinstance(value, int):
            ok = int in valid
        else:
            ok = type(value) in valid
        if not ok:
            out.append(value)
    return tuple(out)


_STR_WRONG = _wrong(str)
_NOT_NAMES = ("", "UPPER", "-leading", "trailing-", "under_score", "a.", "sp ace", "ünï", "x" * 254, "a/b")
_NOT_IDS = ("", "has space", "x" * 129, "é", "a/b", "../../etc", "id\n", "{}")
_NOT_TIMES = ("", "yesterday", "2026-02-30T00:00:00Z", "2026-11-21T12:00:00", "12:00", "1764633600",
              "2026-11-21T25:00:00Z")
_TOO_LONG = "x" * 1025


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message: where it is, whether it is required, what breaks it."""

    path: tuple[str | int, ...]
    required: bool
    wrong: tuple[Any, ...]
    bad: tuple[Any, ...]


def _str(path: tuple[str | int, ...], required: bool = True) -> Field:
    # an optional field may be null: that is the field left out, not a wrong type
    return Field(path, required, _STR_WRONG if required else _wrong(str, type(None)), ("", _TOO_LONG))


def _name(path: tuple[str | int, ...]) -> Field:
    return Field(path, True, _STR_WRONG, _NOT_NAMES)


def fields_of_event(event: dict[str, Any]) -> list[Field]:
    fields = [
        Field(("v",), True, _STR_WRONG, ("", "1", "1.0.0", "one", " 1.0", "1.x")),
        Field(("type",), True, _STR_WRONG, ("", "Refresh", "REFRESH", "refresh ", "busrefresh")),
        Field(("id",), True, _STR_WRONG, _NOT_IDS),
        _str(("origin",)),
        Field(("issuedAt",), True, _STR_WRONG, _NOT_TIMES),
        Field(("deadline",), True, _STR_WRONG, _NOT_TIMES),
        Field(("target",), True, _wrong(dict), ()),
        Field(("target", "scope"), True, _STR_WRONG, ("", "Pod", "cluster", "everyone")),
        Field(("sources",), True, _wrong(list), ([],)),
    ]
    scope = event["target"]["scope"]
    needed = {"pod": ("namespace", "name"), "workload": ("namespace", "kind", "name"),
              "namespace": ("namespace",), "all": ()}[scope]
    for key in needed:
        fields.append(_str(("target", key)))
    for i, source in enumerate(event["sources"]):
        fields += [
            # not required: with other sources left, removing one is still a valid event
            Field(("sources", i), False, _wrong(dict), ()),
            Field(("sources", i, "kind"), True, _STR_WRONG, ("", "configmap", "Pod", "ConfigMaps")),
            _name(("sources", i, "name")),
            _name(("sources", i, "namespace")),
        ]
        if "resourceVersion" in source:
            fields.append(_str(("sources", i, "resourceVersion"), required=False))
        if "keys" in source:
            fields.append(Field(("sources", i, "keys"), False, _wrong(list, type(None)),
                                ([], ["a", "a"], ["."], [".."], ["a/b"], [1], [f"k{j}" for j in range(65)])))
    action = event.get("action")
    if action is not None:
        fields += [
            Field(("action",), False, _wrong(dict, type(None)), ()),
            Field(("action", "type"), True, _STR_WRONG, ("", "exec", "SIGHUP", "Signal")),
        ]
        if action["type"] == "signal":
            fields.append(Field(("action", "signal"), True, _STR_WRONG, ("", "HUP", "SIGKILL", "sighup")))
        elif action["type"] == "http":
            fields += [
                Field(("action", "method"), True, _STR_WRONG, ("", "DELETE", "get")),
                Field(("action", "port"), True, _wrong(int), (0, -1, 65536, 10**12)),
                Field(("action", "path"), True, _STR_WRONG, ("", "reload", "x/y")),
            ]
            if "timeoutSeconds" in action:
                fields.append(Field(("action", "timeoutSeconds"), False, _wrong(int, float, type(None)),
                                    (0, -1, 60.5, 1e9)))
    if "refresh" in event:
        fields += [
            Field(("refresh",), False, _wrong(dict, type(None)), ()),
            _name(("refresh", "namespace")),
            _name(("refresh", "name")),
        ]
        if "generation" in event["refresh"]:
            fields.append(Field(("refresh", "generation"), False, _wrong(int, type(None)), ()))
    return fields


def fields_of_ack(ack: dict[str, Any]) -> list[Field]:
    fields = [
        Field(("v",), True, _STR_WRONG, ("", "1", "1.0.0", "one", " 1.0")),
        Field(("type",), True, _STR_WRONG, ("", "Ack", "ACK", "ack ", "acknowledge")),
        Field(("id",), True, _STR_WRONG, _NOT_IDS),
        Field(("eventId",), True, _STR_WRONG, _NOT_IDS),
        Field(("pod",), True, _wrong(dict), ()),
        _name(("pod", "namespace")),
        _name(("pod", "name")),
        Field(("result",), True, _STR_WRONG, ("", "OK", "success", "done")),
        Field(("receivedAt",), True, _STR_WRONG, _NOT_TIMES),
        Field(("timings",), False, _wrong(dict, type(None)), ()),
        Field(("timings", "writtenMs"), False, _wrong(int, float, type(None)), ()),
        Field(("timings", "reloadedMs"), False, _wrong(int, float, type(None)), ()),
    ]
    if "configHash" in ack:
        fields.append(_str(("configHash",), required=False))
    if "identityToken" in ack:
        fields.append(Field(("identityToken",), False, _wrong(str, type(None)),
                            ("", "a.b", "a.b.c.d", "sp ace.b.c", "\u00e9.b.c", "a.b.c" + "x" * 8192)))
    if ack["result"] == "failed":
        fields.append(_str(("error",)))
    elif "error" in ack:
        fields.append(_str(("error",), required=False))
    return fields


def mutate(message: dict[str, Any], field_: Field, how: str, value: Any = None) -> dict[str, Any]:
    """``message`` (changed in place) with ``field_`` removed (``missing_field``) or set to
    ``value`` (``wrong_type``, ``bad_value``)."""
    *parents, last = field_.path
    holder: Any = message
    for step in parents:
        holder = holder[step]
    if how == "missing_field":
        del holder[last]
    else:
        holder[last] = value
    return message


# -- valid messages ------------------------------------------------------------------------

_T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _time(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Generator:
    """``messages(n)`` yields ``n`` messages; the same seed gives the same messages."""

    def __init__(self, seed: int, live: Live, categories: tuple[Category, ...] = CATEGORIES) -> None:
        self.seed = seed
        self.live = live
        self.categories = categories
        self.rng = random.Random(seed)
        total = 0.0
        self._cum: list[float] = []
        for c in categories:
            total += c.weight
            self._cum.append(total)
        self._walk = {To.SIDECAR: 0, To.OPERATOR: 0}
        self._makers: dict[str, Callable[[Category], tuple[str, bytes]]] = {
            "ack_on_refresh_key": lambda c: (self._sidecar_key(), self._dumps(self._ack())),
            "foreign_event": lambda c: (self._sidecar_key(), self._dumps(self._event(foreign=True))),
            "replayed_event": self._replayed,
            "unmanaged_source": self._unmanaged,
            "event_on_ack_key": lambda c: (self._ack_key(), self._dumps(self._event())),
            "ack_unknown_event": lambda c: self._signed(self._id()),
            "ack_finished_round": lambda c: self._signed(self._pick(self.live.finished)),
            "ack_not_target": lambda c: self._signed(self.live.anchor_event, self.live.other_pod),
            "ack_duplicate": lambda c: self._signed(self.live.anchor_event),
            "ack_forged": self._forged,
            "ack_without_token": self._without_token,
            "ack_bad_token": self._bad_token,
        }

    def messages(self, n: int) -> Iterator[Message]:
        rng, cum, cats = self.rng, self._cum, self.categories
        top = cum[-1]
        for _ in range(n):
            x = rng.random() * top
            lo, hi = 0, len(cum) - 1
            while lo < hi:  # bisect by hand: keeps the draw sequence independent of Python's choices()
                mid = (lo + hi) // 2
                if cum[mid] > x:
                    hi = mid
                else:
                    lo = mid + 1
            category = cats[lo]
            key, body = self.make(category)
            yield Message(category, key, body)

    def make(self, category: Category) -> tuple[str, bytes]:
        maker = self._makers.get(category.name)
        if maker is not None:
            return maker(category)
        shape = category.name.split("_", 1)[1]
        if category.to is To.SIDECAR:
            return self._sidecar_key(), self._shaped(shape, self._event(), To.SIDECAR)
        token = None
        if self.rng.random() < 0.5:  # so that mutations reach the identityToken field too
            token = ".".join(self._b64(self.rng.randbytes(12)) for _ in range(3))
        return self._ack_key(), self._shaped(shape, self._ack(token=token), To.OPERATOR)

    # -- routing -------------------------------------------------------------------------

    def _sidecar_key(self) -> str:
        """One of the four keys the sidecar's queue is bound to."""
        live = self.live
        return routing.sidecar_bindings(routing.PodIdentity(live.namespace, live.pod, *live.workload))[
            self.rng.randrange(4)]

    def _ack_key(self, pod: str | None = None) -> str:
        return routing.ack_key(self.live.namespace, pod or self._pod_name())

    # -- building blocks -----------------------------------------------------------------

    def _id(self) -> str:
        """A UUID4-shaped id from the seeded generator (uuid4() is not reproducible)."""
        return "%08x-%04x-4%03x-%04x-%012x" % (  # noqa: UP031
            self.rng.getrandbits(32), self.rng.getrandbits(16), self.rng.getrandbits(12),
            0x8000 | self.rng.getrandbits(14), self.rng.getrandbits(48))

    def _pod_name(self) -> str:
        return f"fuzz-{self.rng.getrandbits(32):08x}-{self.rng.randrange(100)}"

    @staticmethod
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def _event(self, *, foreign: bool = False, event_id: str | None = None,
               sources: list[dict[str, Any]] | None = None, to_me: bool = False) -> dict[str, Any]:
        rng, live = self.rng, self.live
        ns = live.namespace
        if to_me:
            target: dict[str, Any] = {"scope": "pod", "namespace": ns, "name": live.pod}
        elif foreign:
            other_ns = f"other-{rng.randrange(1000)}"
            target = rng.choice((
                {"scope": "pod", "namespace": ns, "name": self._pod_name()},
                {"scope": "pod", "namespace": other_ns, "name": live.pod},
                {"scope": "workload", "namespace": ns, "kind": "Deployment",
                 "name": f"not-{live.workload[1]}"},
                {"scope": "workload", "namespace": ns, "kind": "StatefulSet", "name": live.workload[1]}
                if live.workload[0] != "StatefulSet" else
                {"scope": "workload", "namespace": ns, "kind": "Deployment", "name": live.workload[1]},
                {"scope": "namespace", "namespace": other_ns},
            ))
        else:
            target = rng.choice((
                {"scope": "pod", "namespace": ns, "name": live.pod},
                {"scope": "workload", "namespace": ns, "kind": live.workload[0], "name": live.workload[1]},
                {"scope": "namespace", "namespace": ns},
                {"scope": "all"},
            ))
        if sources is None:
            sources = []
            for i in range(rng.choice((1, 1, 1, 2, 3))):
                source: dict[str, Any] = {"kind": rng.choice(("ConfigMap", "Secret")),
                                          "name": f"cfg-{i}-{rng.randrange(100)}", "namespace": ns}
                if rng.random() < 0.7:
                    source["resourceVersion"] = str(rng.randrange(1, 10**7))
                if rng.random() < 0.3:
                    source["keys"] = [f"key-{k}.conf" for k in range(rng.randrange(1, 4))]
                sources.append(source)
        issued = _T0 + timedelta(seconds=rng.randrange(10**6))
        event: dict[str, Any] = {
            "v": rng.choice(("1.0", "1.1", "1.9")), "type": "refresh", "id": event_id or self._id(),
            "origin": "refreshbus-operator/fuzz", "issuedAt": _time(issued),
            "deadline": _time(issued + timedelta(seconds=60)), "target": target, "sources": sources,
        }
        pick = rng.randrange(4)
        if pick == 1:
            event["action"] = {"type": "signal", "signal": rng.choice(("SIGHUP", "SIGUSR1", "SIGUSR2"))}
        elif pick == 2:
            event["action"] = {"type": "http", "method": "POST", "port": rng.randrange(1, 65536),
                               "path": "/-/reload"}
            if rng.random() < 0.5:
                event["action"]["timeoutSeconds"] = rng.choice((1, 2.5, 60))
        elif pick == 3:
            event["action"] = {"type": "none"}
        if rng.random() < 0.5:
            event["refresh"] = {"namespace": ns, "name": f"refresh-{rng.randrange(1000)}"}
            if rng.random() < 0.5:
                event["refresh"]["generation"] = rng.randrange(1, 100)
        return event

    def _ack(self, *, event_id: str | None = None, pod: str | None = None,
             token: str | None = None) -> dict[str, Any]:
        rng, ns = self.rng, self.live.namespace
        pod = pod or self._pod_name()
        result = rng.choice(("ok", "ok", "unchanged", "failed"))
        ack: dict[str, Any] = {
            "v": rng.choice(("1.0", "1.1", "1.9")), "type": "ack", "id": self._id(),
            "eventId": event_id or self._id(), "origin": f"{ns}/{pod}",
            "pod": {"namespace": ns, "name": pod}, "result": result,
            "receivedAt": _time(_T0 + timedelta(seconds=rng.randrange(10**6))),
            "timings": {"writtenMs": round(rng.random() * 10, 3), "reloadedMs": round(rng.random() * 50, 3)},
        }
        if result != "failed" or rng.random() < 0.5:
            ack["configHash"] = f"sha256:{rng.getrandbits(256):064x}"
        if result == "failed":
            ack["error"] = rng.choice(("reload failed: no process matches", "fetch failed: 403 Forbidden"))
        if token is not None:
            ack["identityToken"] = token
        return ack

    # -- valid messages that still must not do anything ------------------------------------

    def _replayed(self, category: Category) -> tuple[str, bytes]:
        finished = self.live.finished
        event_id = finished[self.rng.randrange(len(finished))]
        event = self._event(event_id=event_id, to_me=True, sources=[
            {"kind": "ConfigMap", "name": self.live.configmap, "namespace": self.live.namespace}])
        return self._sidecar_key(), self._dumps(event)

    def _unmanaged(self, category: Category) -> tuple[str, bytes]:
        event = self._event(to_me=True, sources=[
            {"kind": "ConfigMap", "name": f"not-{self.live.configmap}-{self.rng.randrange(100)}",
             "namespace": self.live.namespace}])
        return self._sidecar_key(), self._dumps(event)

    def _pick(self, ids: list[str]) -> str:
        return ids[self.rng.randrange(len(ids))]

    def _signed(self, event_id: str, pod: str | None = None) -> tuple[str, bytes]:
        """A valid ack from ``pod`` (default: the real pod) with that pod's real token."""
        pod = pod or self.live.pod
        ack = self._ack(event_id=event_id, pod=pod, token=self.live.tokens[pod])
        return self._ack_key(pod), self._dumps(ack)

    def _any_event(self) -> str:
        pick = self.rng.randrange(3)
        if pick == 0:
            return self.live.anchor_event
        return self._pick(self.live.finished) if pick == 1 else self._id()

    def _forged(self, category: Category) -> tuple[str, bytes]:
        live, rng = self.live, self.rng
        sender = rng.choice((live.pod, live.other_pod))
        victim = rng.choice((live.silent_pod, live.silent_pod, live.pod, live.other_pod, self._pod_name()))
        if victim == sender:
            victim = live.silent_pod
        ack = self._ack(event_id=live.anchor_event if victim == live.silent_pod else self._any_event(),
                        pod=victim, token=live.tokens[sender])
        return self._ack_key(rng.choice((sender, victim))), self._dumps(ack)

    def _without_token(self, category: Category) -> tuple[str, bytes]:
        ack = self._ack(event_id=self._any_event(), pod=self.live.pod)
        return self._ack_key(self.live.pod), self._dumps(ack)

    def _bad_token(self, category: Category) -> tuple[str, bytes]:
        rng, live = self.rng, self.live
        pod = rng.choice((live.pod, live.other_pod, live.silent_pod))
        if rng.random() < 0.5:
            token = self._fake_jwt({
                "aud": ["refreshbus.io/ack"], "exp": 4102444800, "iss": "https://kubernetes.default.svc",
                "sub": f"system:serviceaccount:{live.namespace}:default",
                "kubernetes.io": {"namespace": live.namespace, "pod": {"name": pod, "uid": self._id()},
                                  "serviceaccount": {"name": "default", "uid": self._id()}}})
        else:  # JWT-shaped, but its parts are not base64url JSON
            token = ".".join(self._b64(rng.randbytes(rng.randrange(8, 64))) for _ in range(3))
        return self._ack_key(pod), self._dumps(self._ack(event_id=self._any_event(), pod=pod, token=token))

    def _fake_jwt(self, claims: dict[str, Any]) -> str:
        header = self._b64(self._dumps({"alg": "RS256", "kid": self._id()}))
        return f"{header}.{self._b64(self._dumps(claims))}.{self._b64(self.rng.randbytes(256))}"

    @staticmethod
    def _b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    # -- shapes of a bad message -----------------------------------------------------------

    def _shaped(self, shape: str, message: dict[str, Any], to: To) -> bytes:
        rng = self.rng
        if shape == "truncated":
            body = self._dumps(message)
            return body[: rng.randrange(len(body))]
        if shape == "oversized":
            # mostly just past the limit (that is where an off-by-one would be), some far past
            top = MAX_MESSAGE_BYTES + 4096 if rng.random() < 0.9 else 4 * MAX_MESSAGE_BYTES
            size = rng.randrange(MAX_MESSAGE_BYTES + 1, top)
            message["padding"] = ""
            room = size - len(self._dumps(message))
            message["padding"] = "x" * max(room, 1)
            return self._dumps(message)
        if shape == "not_utf8":
            return self._not_utf8(message)
        if shape == "not_json":
            return self._not_json()
        if shape == "not_object":
            return self._dumps(rng.choice(([], [message], "refresh", 42, None, True, 1.5)))
        if shape == "too_deep":
            depth = rng.randrange(1100, 10000)  # deeper than the recursion limit, within 64 KiB
            opener, closer = rng.choice((("[", "]"), ('{"a":', "}")))
            return (opener * depth + "1" + closer * depth).encode()
        if shape == "unknown_version":
            major = rng.choice((0, 2, 3, 9, 10, 100))
            message["v"] = f"{major}.{rng.randrange(10)}"
            return self._dumps(message)
        if shape == "unknown_type":
            message["type"] = rng.choice(("shutdown", "heartbeat", "refresh-all", "nack", "", "event"))
            return self._dumps(message)
        if shape == "field_mutations":
            how = ("missing_field", "wrong_type", "bad_value")[self._walk[to] % 3]
            self._walk[to] += 1
            return self._mutate(message, how, walk=True, to=to)
        return self._mutate(message, shape, walk=False, to=to)

    def _mutate(self, message: dict[str, Any], how: str, *, walk: bool, to: To) -> bytes:
        fields = [f for f in (fields_of_event(message) if to is To.SIDECAR else fields_of_ack(message))
                  if (f.required if how == "missing_field" else f.wrong if how == "wrong_type" else f.bad)]
        chosen = fields[(self._walk[to] // 3) % len(fields)] if walk else self.rng.choice(fields)
        value = None if how == "missing_field" else self.rng.choice(
            chosen.wrong if how == "wrong_type" else chosen.bad)
        return self._dumps(mutate(message, chosen, how, value))

    def _not_utf8(self, message: dict[str, Any]) -> bytes:
        rng = self.rng
        body = self._dumps(message)
        if rng.random() < 0.2:  # valid JSON, but not in UTF-8
            return json.dumps(message).encode(rng.choice(("utf-16", "utf-16-le", "utf-32", "utf-16-be")))
        # stray bytes, an overlong form, an encoded surrogate, beyond U+10FFFF, a cut sequence
        bad = rng.choice((b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80",
                          b"\xf8\x88\x80\x80", b"\xf4\x90\x80\x80", b"\xe2\x28\xa1"))
        # inside a string value, so only the encoding is wrong, never the JSON around it
        quotes = [i for i, ch in enumerate(body) if ch == 0x22]
        at = quotes[rng.randrange(len(quotes) // 2) * 2] + 1
        return body[:at] + bad + body[at:]

    def _not_json(self) -> bytes:
        rng = self.rng
        pick = rng.randrange(4)
        if pick == 0:
            return b""
        if pick == 1:
            return rng.randbytes(rng.randrange(1, 512))
        if pick == 2:
            return rng.choice((b"{", b"}", b"{v:1}", b"{'v':'1.0'}", b"<xml/>", b"NaN", b"refresh", b"\x00",
                               b'{"v":"1.1","type":"refresh",', b"\xef\xbb\xbf{}"))
        return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 200))).encode()
