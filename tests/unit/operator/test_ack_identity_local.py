"""Ack tokens verified locally against the issuer's published keys (no TokenReview per
pod): only a token that is the issuer's, for our audience, unexpired and bound to exactly
the resolved pod (name and uid) counts without a review; everything else is asked of the
API server, whose answer decides. Real RSA keys and signatures (PyJWT), scripted API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from refreshbus_operator.ackidentity import AckVerifier, Check, IssuerKeys, Mode
from refreshbus_operator.acks import AckRouter
from refreshbus_wire import Ack, AckResult, encode, new_id, now
from refreshbus_wire.events import ACK_TOKEN_AUDIENCE

ISSUER = "https://kubernetes.default.svc.cluster.local"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return {**public, "kid": kid, "alg": "RS256", "use": "sig"}


def token(pod: str, uid: str, *, key: rsa.RSAPrivateKey = KEY, kid: str = "k1", issuer: str = ISSUER,
          aud: str = ACK_TOKEN_AUDIENCE, exp: float | None = None, namespace: str = "ns") -> str:
    claims = {"iss": issuer, "aud": [aud], "exp": int(exp or time.time() + 600), "iat": int(time.time()) - 5,
              "sub": f"system:serviceaccount:{namespace}:default",
              "kubernetes.io": {"namespace": namespace, "pod": {"name": pod, "uid": uid},
                                "serviceaccount": {"name": "default", "uid": "sa-uid"}}}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


class Api:
    """Scripted issuer endpoints and TokenReview: counts each."""

    def __init__(self, keys: list[dict[str, Any]], fail_keys: bool = False) -> None:
        self.keys = keys
        self.fail_keys = fail_keys
        self.gets: list[str] = []
        self.reviews: list[str] = []

    async def get(self, path: str) -> Any:
        self.gets.append(path)
        await asyncio.sleep(0.01)  # a real request takes a while: acks keep arriving meanwhile
        if self.fail_keys:
            raise PermissionError("403 Forbidden")
        if path == "/.well-known/openid-configuration":
            return {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/openid/v1/jwks"}
        assert path == "/openid/v1/jwks"
        return {"keys": self.keys}

    async def review(self, path: str, body: Mapping[str, Any]) -> Any:
        self.reviews.append(body["spec"]["token"])
        return {"status": {"authenticated": False, "error": "scripted: refused"}}


class Clock:
    mono = 100.0


def ack(pod: str, tok: str) -> Ack:
    return Ack(id=new_id(), event_id="e1", namespace="ns", pod=pod, result=AckResult.OK, received_at=now(),
               identity_token=tok)


def verifier(api: Api, clock: Clock) -> AckVerifier:
    return AckVerifier(api.review, Mode.REQUIRE, keys=IssuerKeys(api.get, clock=lambda: clock.mono))


def test_tokens_of_the_resolved_pods_are_verified_without_a_review_and_the_keys_fetched_once() -> None:
    api = Api([jwk(KEY, "k1")])

    async def main() -> None:
        v = verifier(api, Clock())
        first = asyncio.ensure_future(v.verify(ack("p0", token("p0", "u0")), "u0"))
        await asyncio.sleep(0.005)  # the keys are being fetched while the other acks arrive
        verdicts = await asyncio.gather(first, *(v.verify(ack(f"p{i}", token(f"p{i}", f"u{i}")), f"u{i}")
                                                 for i in range(1, 200)))
        assert all(verdict.ok for verdict in verdicts)
        assert v.local_verifications == 200

    asyncio.run(main())
    assert api.reviews == []
    assert api.gets == ["/.well-known/openid-configuration", "/openid/v1/jwks"]


@pytest.mark.parametrize("case", ["other uid", "unknown uid", "other signer", "other issuer", "expired",
                                  "other pod's token"])
def test_what_the_local_check_does_not_accept_goes_to_the_api_server(case: str) -> None:
    api = Api([jwk(KEY, "k1")])
    tok, uid, pod = token("web", "u1"), "u1", "web"
    if case == "other uid":  # e.g. a StatefulSet pod deleted and created again under its name
        uid = "u2"
    elif case == "unknown uid":
        uid = ""
    elif case == "other signer":
        tok = token("web", "u1", key=OTHER)
    elif case == "other issuer":
        tok = token("web", "u1", issuer="https://elsewhere")
    elif case == "expired":
        tok = token("web", "u1", exp=time.time() - 1)
    else:
        tok = token("db", "u1")

    async def main() -> Check:
        v = verifier(api, Clock())
        verdict = await v.verify(ack(pod, tok), uid or None)
        assert v.local_verifications == 0
        return verdict.check

    check = asyncio.run(main())
    assert check in (Check.INVALID, Check.FORGED)
    if case in ("other uid", "unknown uid", "other signer", "other issuer"):
        assert api.reviews == [tok]  # the API server decides
    else:
        assert api.reviews == []  # refused on its claims already, as before


def test_an_unknown_key_id_fetches_the_keys_again_at_most_every_30_seconds() -> None:
    api = Api([jwk(KEY, "k1")])
    clock = Clock()

    async def main() -> None:
        v = verifier(api, clock)
        assert (await v.verify(ack("web", token("web", "u1")), "u1")).ok
        api.keys = [jwk(KEY, "k1"), jwk(OTHER, "k2")]  # the issuer rotated: a new key
        rotated = token("web", "u1", key=OTHER, kid="k2")
        assert not (await v.verify(ack("web", rotated), "u1")).ok  # keys fetched < 30 s ago: reviewed
        clock.mono += 31
        assert (await v.verify(ack("web", rotated), "u1")).ok

    asyncio.run(main())
    assert api.gets.count("/openid/v1/jwks") == 2
    assert len(api.reviews) == 1


def test_without_the_issuer_keys_every_token_gets_a_review() -> None:
    api = Api([], fail_keys=True)

    async def main() -> None:
        v = verifier(api, Clock())
        for i in range(3):
            await v.verify(ack("web", token("web", "u1", exp=time.time() + 600 + i)), "u1")

    asyncio.run(main())
    assert len(api.reviews) == 3
    assert api.gets.count("/.well-known/openid-configuration") == 1  # not asked again at once


def test_a_token_is_verified_once_then_remembered_for_its_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api([jwk(KEY, "k1")])
    decoded = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    tok = token("web", "u1")

    async def main() -> None:
        v = verifier(api, Clock())
        for _ in range(5):
            assert (await v.verify(ack("web", tok), "u1")).ok
        assert not (await v.verify(ack("web", tok), "u2")).ok  # remembered for uid u1 only

    asyncio.run(main())
    assert len(decoded) == 1
    assert len(api.reviews) == 1  # the u2 one, asked of the API server


def test_a_late_ack_with_a_token_verified_in_its_round_costs_no_review() -> None:
    api = Api([jwk(KEY, "k1")])
    settled: list[object] = []
    tok = token("web", "u1")

    async def main() -> None:
        router = AckRouter(settle=settled.extend, verifier=verifier(api, Clock()))
        router.register("e1", Sink())
        assert router.handle(encode(ack("web", tok)), "first") == "checking"
        while router._checks:
            await asyncio.sleep(0)
        router.unregister("e1")
        assert router.handle(encode(ack("web", tok)), "redelivered") == "checking"
        while router._checks:
            await asyncio.sleep(0)

    asyncio.run(main())
    assert settled == ["redelivered"]  # dropped as late, after its identity checked out
    assert api.reviews == []


class Sink:
    def fold(self, ack: Ack, tag: object) -> str:
        return "folded"

    def refused(self, ack: Ack, verdict: object, enforced: bool) -> None:
        raise AssertionError("a genuine ack was refused")

    def pod_uid(self, pod: str) -> str | None:
        return "u1"
