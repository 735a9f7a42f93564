"""Ack identity without an API server: the verifier's early refusals, caching and failure
handling with a scripted TokenReview, and what the router does with each verdict. The real
TokenReview path is tested in tests/integration/operator/test_ack_identity.py."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest
from refreshbus_operator import settings
from refreshbus_operator.ackidentity import AckVerifier, Check, Mode, Verdict
from refreshbus_operator.acks import AckRouter
from refreshbus_wire import Ack, AckResult, encode, new_id, now
from refreshbus_wire.events import ACK_TOKEN_AUDIENCE

NOW = 1_800_000_000.0


def jwt(claims: Mapping[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"


def pod_token(pod: str, namespace: str = "ns", exp: float = NOW + 600, aud: str = ACK_TOKEN_AUDIENCE) -> str:
    return jwt({"aud": [aud], "exp": exp, "kubernetes.io": {"namespace": namespace, "pod": {"name": pod}}})


def review_answer(pod: str, namespace: str = "ns") -> dict[str, Any]:
    return {"status": {"authenticated": True, "audiences": [ACK_TOKEN_AUDIENCE], "user": {
        "username": f"system:serviceaccount:{namespace}:default",
        "extra": {"authentication.kubernetes.io/pod-name": [pod],
                  "authentication.kubernetes.io/pod-uid": ["uid-" + pod]}}}}  # fmt: skip


class Api:
    """A scripted TokenReview endpoint: answers by token, counts calls, can fail."""

    def __init__(self, answers: Mapping[str, Any], failures: int = 0) -> None:
        self.answers = answers
        self.failures = failures
        self.calls: list[str] = []

    async def review(self, path: str, body: Mapping[str, Any]) -> Any:
        assert path == "/apis/authentication.k8s.io/v1/tokenreviews"
        assert body["spec"]["audiences"] == [ACK_TOKEN_AUDIENCE]
        self.calls.append(body["spec"]["token"])
        await asyncio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("API server unavailable")
        return self.answers.get(body["spec"]["token"], {"status": {"authenticated": False, "error": "bad"}})


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0

    def wall(self) -> float:
        return NOW + self.mono - 100.0


def ack(pod: str, token: str | None, event_id: str = "e1") -> Ack:
    return Ack(id=new_id(), event_id=event_id, namespace="ns", pod=pod, result=AckResult.OK,
               received_at=now(), identity_token=token)  # fmt: skip


def verifier(api: Api, clock: Clock, mode: Mode = Mode.REQUIRE) -> AckVerifier:
    return AckVerifier(api.review, mode, clock=lambda: clock.mono, wall_clock=clock.wall)


def test_what_cannot_pass_is_refused_without_a_review() -> None:
    api, clock = Api({}), Clock()

    async def main() -> None:
        v = verifier(api, clock)
        assert (await v.verify(ack("web", None))).check is Check.MISSING
        assert (await v.verify(ack("web", "a.%%%.c"))).check is Check.INVALID
        other_audience = pod_token("web", aud="https://kubernetes.default.svc")
        assert "audience" in (await v.verify(ack("web", other_audience))).detail
        expired = await v.verify(ack("web", pod_token("web", exp=NOW - 1)))
        assert (expired.check, expired.detail) == (Check.INVALID, "the identity token has expired")
        forged = await v.verify(ack("web", pod_token("rogue")))
        assert forged.check is Check.FORGED
        assert "ns/rogue" in forged.detail

    asyncio.run(main())
    assert api.calls == []


def test_a_verified_token_is_reviewed_once_until_it_expires() -> None:
    token = pod_token("web", exp=NOW + 600)
    api, clock = Api({token: review_answer("web")}), Clock()

    async def main() -> None:
        v = verifier(api, clock)
        verdicts = await asyncio.gather(*(v.verify(ack("web", token)) for _ in range(50)))
        assert all(verdict.ok for verdict in verdicts)
        clock.mono += 599
        assert (await v.verify(ack("web", token))).ok
        assert len(api.calls) == 1
        clock.mono += 2  # expired: the next ack's token is refused before any review
        assert (await v.verify(ack("web", token))).check is Check.INVALID
        assert len(api.calls) == 1

    asyncio.run(main())


def test_refused_tokens_leave_the_cache_once_expired_so_a_flood_of_made_up_ones_stays_small() -> None:
    api, clock = Api({}), Clock()

    async def main() -> None:
        v = verifier(api, clock)
        for i in range(200):  # made-up tokens with the right claims: one review each, refused
            assert (await v.verify(ack("web", pod_token("web", exp=NOW + 600 + i)))).check is Check.INVALID
            clock.mono += 1.0
        assert len(api.calls) == 200
        # only the last REFUSED_CACHE_SECONDS' worth are remembered, not all 200
        assert len(v._cache) + len(getattr(v, "_refused", ())) <= 61
        again = pod_token("web", exp=NOW + 600 + 199)
        assert (await v.verify(ack("web", again))).check is Check.INVALID
        assert len(api.calls) == 200  # still cached

    asyncio.run(main())


def test_the_review_decides_whose_token_it_is() -> None:
    # Claims without a pod (hand-made): only the review says whose it is.
    unclaimed = jwt({"aud": [ACK_TOKEN_AUDIENCE], "exp": NOW + 600})
    unbound = jwt({"aud": [ACK_TOKEN_AUDIENCE], "exp": NOW + 601})
    api = Api({
        unclaimed: review_answer("rogue"),
        unbound: {"status": {"authenticated": True, "audiences": [ACK_TOKEN_AUDIENCE],
                             "user": {"username": "system:serviceaccount:ns:default"}}},
    })  # fmt: skip

    async def main() -> None:
        v = verifier(api, Clock())
        forged = await v.verify(ack("web", unclaimed))
        assert forged.check is Check.FORGED
        assert "token of pod ns/rogue" in forged.detail
        assert (await v.verify(ack("rogue", unclaimed))).ok  # same token, its own pod: cached
        not_bound = await v.verify(ack("web", unbound))
        assert not_bound.check is Check.INVALID
        assert "bound to a pod" in not_bound.detail
        refused = await v.verify(ack("web", pod_token("web")))  # the API server says no
        assert refused.check is Check.INVALID
        assert "does not accept" in refused.detail

    asyncio.run(main())
    assert len(api.calls) == 3


def test_an_unreachable_api_server_is_retried_then_unverifiable_and_not_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_wait(_seconds: float) -> None:
        return None

    monkeypatch.setattr("refreshbus_operator.ackidentity.asyncio.sleep", no_wait)
    token = pod_token("web")
    api = Api({token: review_answer("web")}, failures=3)

    async def main() -> None:
        v = verifier(api, Clock())
        down = await v.verify(ack("web", token))
        assert down.check is Check.UNVERIFIABLE
        assert "ConnectionError" in down.detail
        assert (await v.verify(ack("web", token))).ok  # asked again, not a cached refusal

    asyncio.run(main())
    assert len(api.calls) == 4


class Sink:
    def __init__(self) -> None:
        self.folded: list[str] = []
        self.refusals: list[tuple[str, Check, bool]] = []

    def fold(self, ack: Ack, tag: tuple[int, int]) -> str:
        self.folded.append(ack.pod)
        return "folded"

    def refused(self, ack: Ack, verdict: Verdict, enforced: bool) -> None:
        self.refusals.append((ack.pod, verdict.check, enforced))

    def pod_uid(self, pod: str) -> str | None:
        return None


@pytest.mark.parametrize("mode", [Mode.REQUIRE, Mode.WARN])
def test_the_router_routes_only_what_checks_out_unless_warned(mode: Mode) -> None:
    token = pod_token("web")
    api = Api({token: review_answer("web")})
    settled: list[tuple[int, int]] = []
    sink = Sink()

    async def main() -> None:
        router = AckRouter(settle=settled.extend, verifier=verifier(api, Clock(), mode))
        router.register("e1", sink)
        assert router.handle(encode(ack("web", pod_token("rogue"))), (1, 1)) == "checking"
        assert router.handle(encode(ack("web", token)), (1, 2)) == "checking"
        while router._checks:
            await asyncio.sleep(0)

    asyncio.run(main())
    assert sink.refusals == [("web", Check.FORGED, mode is Mode.REQUIRE)]
    if mode is Mode.REQUIRE:
        assert sink.folded == ["web"]  # the genuine one only
        assert settled == [(1, 1)]  # refused: settled at once, never redelivered
    else:
        assert sink.folded == ["web", "web"]
        assert settled == []


def test_the_mode_is_require_unless_told_and_nothing_else_is_accepted() -> None:
    assert settings.from_env({}).ack_identity == "require"
    assert settings.from_env({"REFRESHBUS_OPERATOR_ACK_IDENTITY": "warn"}).ack_identity == "warn"
    with pytest.raises(ValueError, match="require or warn"):
        settings.from_env({"REFRESHBUS_OPERATOR_ACK_IDENTITY": "off"})
