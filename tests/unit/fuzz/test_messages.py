"""The bad-message generator behind ``make fuzz``: reproducible from its seed, and every
message is what its category says -- checked against the real decoder and the sidecar's
own targeting, so the counts the fuzz run expects are the counts the processes must show."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
from refreshbus_sidecar.refresher import addressed_to
from refreshbus_support.fuzz.messages import (
    BY_NAME,
    CATEGORIES,
    OPERATOR_ACKS,
    SIDECAR_DROPPED,
    Generator,
    Live,
    To,
    fields_of_ack,
    fields_of_event,
    mutate,
    series,
)
from refreshbus_wire import Ack, ProtocolError, RefreshEvent, decode, routing

N = 20_000


TOKENS = {"web-0": "aGVhZGVy.d2ViLTA.c2ln", "web-other": "aGVhZGVy.b3RoZXI.c2ln"}


def live() -> Live:
    return Live(namespace="shop", pod="web-0", workload=("Deployment", "web"), configmap="app-config",
                silent_pod="web-silent", other_pod="web-other", tokens=dict(TOKENS),
                anchor_event="11111111-2222-4333-8444-555555555555",
                finished=["aaaaaaaa-2222-4333-8444-555555555555", "bbbbbbbb-2222-4333-8444-555555555555"])


ME = routing.PodIdentity("shop", "web-0", "Deployment", "web")
ME_POD = ("shop", "web-0")


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, str, bytes]]:
    return [(m.category.name, m.routing_key, m.body) for m in Generator(7, live()).messages(N)]


def test_the_same_seed_gives_the_same_messages(messages: list[tuple[str, str, bytes]]) -> None:
    again = [(m.category.name, m.routing_key, m.body) for m in Generator(7, live()).messages(2000)]
    assert again == messages[:2000]
    other = [(m.category.name, m.routing_key, m.body) for m in Generator(8, live()).messages(2000)]
    assert other != again


def test_every_category_is_generated_in_proportion(messages: list[tuple[str, str, bytes]]) -> None:
    seen = Counter(name for name, _, _ in messages)
    total = sum(c.weight for c in CATEGORIES)
    for category in CATEGORIES:
        expected = N * category.weight / total
        assert seen[category.name] > 0, category.name
        assert abs(seen[category.name] - expected) < 5 * expected**0.5 + 3, category.name


def test_each_message_goes_where_its_category_says(messages: list[tuple[str, str, bytes]]) -> None:
    sidecar_keys = set(routing.sidecar_bindings(ME))
    for name, key, _ in messages:
        if BY_NAME[name].to is To.SIDECAR:
            assert key in sidecar_keys, (name, key)
        else:
            assert key.startswith("ack.shop."), (name, key)


def test_messages_counted_as_malformed_are_refused_by_the_decoder(
    messages: list[tuple[str, str, bytes]],
) -> None:
    malformed = {series(SIDECAR_DROPPED, reason="malformed"), series(OPERATOR_ACKS, outcome="malformed")}
    for name, _, body in messages:
        category = BY_NAME[name]
        if set(category.counts) & malformed and name != "event_on_ack_key":
            with pytest.raises(ProtocolError):
                decode(body)


def test_the_valid_messages_are_what_their_category_says(messages: list[tuple[str, str, bytes]]) -> None:
    lv = live()
    for name, _, body in messages:
        category = BY_NAME[name]
        if category.counts[0] in {series(SIDECAR_DROPPED, reason="malformed"),
                                  series(OPERATOR_ACKS, outcome="malformed")} and name != "event_on_ack_key":
            continue
        message = decode(body)
        if name == "ack_on_refresh_key":
            assert isinstance(message, Ack)
        elif name == "event_on_ack_key":
            assert isinstance(message, RefreshEvent)
        elif name == "foreign_event":
            assert isinstance(message, RefreshEvent)
            assert not addressed_to(message, ME)
        elif name in ("replayed_event", "unmanaged_source"):
            assert isinstance(message, RefreshEvent)
            assert addressed_to(message, ME)
            assert (message.id in lv.finished) == (name == "replayed_event")
            managed = [s.name == lv.configmap for s in message.sources]
            assert all(managed) if name == "replayed_event" else not any(managed)
        else:
            assert isinstance(message, Ack), name
            sent_by = {v: k for k, v in TOKENS.items()}.get(message.identity_token or "")
            if name == "ack_unknown_event":
                assert message.event_id not in (lv.anchor_event, *lv.finished)
            elif name == "ack_finished_round":
                assert message.event_id in lv.finished
            elif name == "ack_not_target":
                assert message.event_id == lv.anchor_event
                assert message.pod == "web-other"
            elif name == "ack_duplicate":
                assert message.event_id == lv.anchor_event
                assert (message.namespace, message.pod) == ME_POD
            if name in ("ack_unknown_event", "ack_finished_round", "ack_not_target", "ack_duplicate"):
                assert sent_by == message.pod  # gets past the identity check
            elif name == "ack_forged":
                assert sent_by is not None
                assert sent_by != message.pod
            elif name == "ack_without_token":
                assert message.identity_token is None
            else:
                assert name == "ack_bad_token"
                assert message.identity_token is not None
                assert sent_by is None


def test_every_mutation_of_every_field_is_refused_by_the_decoder() -> None:
    """The mutation tables follow the protocol; the decoder must agree with each entry,
    for events and acks of every shape the generator makes (scopes, actions, sources)."""
    gen = Generator(11, live())
    checked = 0
    for _ in range(60):
        signed = lambda: gen._ack(token=TOKENS["web-0"])  # noqa: E731
        for template, fields_of in ((gen._event, fields_of_event), (gen._ack, fields_of_ack),
                                    (signed, fields_of_ack)):
            base = template()
            decode(json.dumps(base))  # the template itself is valid
            for field_ in fields_of(base):
                cases = [("missing_field", None)] if field_.required else []
                cases += [("wrong_type", v) for v in field_.wrong] + [("bad_value", v) for v in field_.bad]
                for how, value in cases:
                    body = json.dumps(mutate(copy.deepcopy(base), field_, how, value))
                    with pytest.raises(ProtocolError):  # if not: this mutation is accepted
                        decode(body)
                    checked += 1
    assert checked > 5000
