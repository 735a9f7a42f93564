"""Which pod sent an ack: its projected service-account token, checked with a TokenReview.

Every sidecar shares one broker user, so the routing key and the ``pod`` field of an ack
prove nothing. A sidecar therefore sends its pod's projected service-account token
(audience :data:`~refreshbus_wire.events.ACK_TOKEN_AUDIENCE`, minted by the kubelet for
that pod only and refused by the API server for anything else), and the operator asks
the API server whose it is (``authentication.k8s.io/v1`` TokenReview). The answer names
the service account's namespace and, for a pod-bound token, the pod
(``authentication.kubernetes.io/pod-name`` / ``pod-uid`` in ``user.extra``; the API
server also refuses a token whose pod no longer exists or has another uid). An ack is
believed only when that pod is the one it speaks for.

One review per token, not per ack: the answer is cached until the token expires (its
``exp`` claim, at most :data:`MAX_CACHE_SECONDS`), so a round of 1,000 pods costs at most
1,000 reviews and the next rounds none until the kubelet rotates the tokens. Reviews of
the same token already under way are shared; a refused token is remembered for
:data:`REFUSED_CACHE_SECONDS` so a flood of copies costs one review. Claims are read
(unverified) only to reject early what cannot match and to know how long to cache.

A TokenReview per pod is still one API request per target whenever the tokens are new,
and the kubelet rotates them every few minutes (they live
:data:`~refreshbus_wire.pods.ACK_TOKEN_EXPIRATION_SECONDS`): a refresh of 1,000 pods
was 1,000 reviews, about 12 s on a 2-core machine. So when the round knows the uid of the
pod an ack speaks for (it resolved it), the token is first verified here, as the API
server itself would: its signature against the API server's published keys (the
service-account issuer's JWKS, ``/openid/v1/jwks``, fetched once and again only for an
unknown key id), issuer, audience, expiry, and the pod name and uid it is bound to
against the resolved pod. Only that can make an ack count without a review; anything the
local check does not accept (no keys, unknown key, bad signature, another uid) goes to
the TokenReview, whose answer decides. The one difference: a review also refuses the
token of a pod deleted since the round resolved it; locally such an ack (signed for that
very pod, during the round) is accepted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import jwt
from refreshbus_wire import Ack
from refreshbus_wire.events import ACK_TOKEN_AUDIENCE

from refreshbus_operator import metrics

log = logging.getLogger(__name__)

TOKEN_REVIEWS_PATH: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
EXTRA_POD_NAME: Final = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID: Final = "authentication.kubernetes.io/pod-uid"
SA_PREFIX: Final = "system:serviceaccount:"

#: Longest a verified token is trusted without asking again (the kubelet's tokens for our
#: audience live 10 minutes; this bounds what a long-lived hand-made token can buy).
MAX_CACHE_SECONDS: Final = 3600.0
#: How long a refused token is refused without asking again.
REFUSED_CACHE_SECONDS: Final = 60.0
#: Tokens remembered at most (verified + refused); the oldest go first.
MAX_CACHED: Final = 50_000
#: TokenReviews in flight at once (a round's first acks from many pods arrive together).
MAX_CONCURRENT_REVIEWS: Final = 16
#: Attempts of one review when the API server fails (not when it answers "no").
REVIEW_ATTEMPTS: Final = 3
#: The service-account issuer's discovery document and keys (served by the API server).
ISSUER_DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
JWKS_PATH: Final = "/openid/v1/jwks"
#: What to accept from them (the API server answers the keys only as a JWK set).
ISSUER_MEDIA_TYPES: Final = "application/jwk-set+json, application/json"
#: Least time between two fetches of the keys (an unknown key id, or keys unavailable).
KEYS_REFETCH_SECONDS: Final = 30.0
#: Signature algorithms the API server signs service-account tokens with.
TOKEN_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


class Mode(StrEnum):
    """What happens to an ack whose identity does not check out."""

    #: Refused: counted, logged, shown on the ConfigRefresh, never folded.
    REQUIRE = "require"
    #: Folded anyway, but counted, logged and shown (for a fleet still running sidecars
    #: older than protocol 1.2, or pods injected before the token volume existed).
    WARN = "warn"


class Check(StrEnum):
    """The outcome of checking one ack (the ``result`` label of the checks metric)."""

    VERIFIED = "verified"
    #: No token: a sidecar older than protocol 1.2, or a pod without the token volume.
    MISSING = "missing"
    #: The API server does not accept the token for our audience, or it is not bound to a pod.
    INVALID = "invalid"
    #: A valid token of another pod: the ack speaks for a pod that did not send it.
    FORGED = "forged"
    #: The API server could not be asked (after retries); nothing is known.
    UNVERIFIABLE = "unverifiable"


@dataclass(frozen=True, slots=True)
class Verdict:
    check: Check
    #: Why, for logs, Events and status (never the token).
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.check is Check.VERIFIED


@dataclass(frozen=True, slots=True)
class PodToken:
    """Whose a verified token is."""

    namespace: str
    pod: str
    pod_uid: str


@dataclass(frozen=True, slots=True)
class _Refused:
    check: Check
    detail: str


_Cached = tuple[PodToken | _Refused, float]  # (answer, monotonic expiry)
Review = Callable[[str, Mapping[str, Any]], Awaitable[Any]]
Get = Callable[[str], Awaitable[Any]]


class IssuerKeys:
    """The service-account issuer and its public keys, as the API server publishes them
    (use on the event loop only). ``get`` reads a path of the API server (the operator
    passes ``Kube.aget``)."""

    def __init__(self, get: Get, clock: Callable[[], float] = time.monotonic) -> None:
        self.get = get
        self._clock = clock
        self.issuer: str | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -KEYS_REFETCH_SECONDS
        self._fetching: asyncio.Future[None] | None = None
        self.fetches = 0

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key with id ``kid``; the keys are fetched again (at most every
        :data:`KEYS_REFETCH_SECONDS`) when it is unknown: the issuer may have rotated."""
        if kid in self._keys:
            return self._keys[kid]
        if self._fetching is None and self._clock() - self._fetched_at >= KEYS_REFETCH_SECONDS:
            self._fetching = asyncio.ensure_future(self._fetch())
        # A fetch under way is awaited by every ack that arrives meanwhile (a round's first
        # acks come together), not only by the one that started it.
        fetching = self._fetching
        if fetching is not None:
            try:
                await asyncio.shield(fetching)
            finally:
                if self._fetching is fetching and fetching.done():
                    self._fetching = None
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        self._fetched_at = self._clock()
        self.fetches += 1
        try:
            discovery = await self.get(ISSUER_DISCOVERY_PATH)
            keys = await self.get(JWKS_PATH)
            issuer = discovery.get("issuer") if isinstance(discovery, dict) else None
            if not isinstance(issuer, str) or not issuer:
                raise ValueError("the issuer discovery document names no issuer")
            fetched = {}
            for entry in (keys.get("keys") if isinstance(keys, dict) else None) or ():
                try:
                    key = jwt.PyJWK(entry)
                except jwt.PyJWTError:
                    continue  # a key type or algorithm we do not use: its tokens go to TokenReview
                if key.key_id:
                    fetched[key.key_id] = key
        except Exception as exc:  # keys unavailable (RBAC, issuer discovery off): reviews only
            log.warning("service-account issuer keys unavailable (%s: %s); ack tokens are checked with "
                        "TokenReviews", type(exc).__name__, exc)
            return
        self.issuer, self._keys = issuer, fetched
        log.info("service-account issuer %s: %d signing key(s)", issuer, len(fetched))


class AckVerifier:
    """Checks acks against the identity of their sender (use on the event loop only).

    ``review`` posts a TokenReview body and returns the API server's answer (the
    operator passes ``Kube.apost``)."""

    def __init__(
        self,
        review: Review,
        mode: Mode = Mode.REQUIRE,
        audience: str = ACK_TOKEN_AUDIENCE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        keys: IssuerKeys | None = None,
    ) -> None:
        self.review = review
        #: The issuer's keys, for tokens whose pod uid the round knows (None: reviews only).
        self.keys = keys
        self.local_verifications = 0
        #: Tokens verified locally: sha256 -> (pod uid, monotonic expiry). The signature
        #: check is the costly part of an ack at thousands per round; a token is reused
        #: for every ack until the kubelet rotates it.
        self._local: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.mode = mode
        self.audience = audience
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        #: Refused tokens apart: they all live REFUSED_CACHE_SECONDS, so the oldest is
        #: always first and expired ones are purged from the front as new ones come in.
        #: (Mixed with verified tokens, which live longer, an expired refused token would
        #: stay until the cap: a flood of made-up tokens grew the cache to MAX_CACHED.)
        self._refused: OrderedDict[str, _Cached] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[PodToken | _Refused]] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REVIEWS)
        self.reviews = 0

    async def verify(self, ack: Ack, pod_uid: str | None = None) -> Verdict:
        """Check ``ack`` against its sender's token; ``pod_uid``: the uid of the pod it
        speaks for, as the round resolved it (lets the token be verified locally)."""
        verdict = await self._verify(ack, pod_uid)
        metrics.ACK_IDENTITY.labels(result=verdict.check.value).inc()
        return verdict

    async def _verify(self, ack: Ack, pod_uid: str | None) -> Verdict:
        token = ack.identity_token
        if token is None:
            return Verdict(Check.MISSING, "the ack carries no identity token (a sidecar older than protocol "
                           "1.2, or a pod injected without the refreshbus-ack-token volume)")
        claims = _claims(token)
        if claims is None:
            return Verdict(Check.INVALID, "the identity token is not a readable JWT")
        early = self._precheck(ack, claims)
        if early is not None:
            return early
        if await self._verified_locally(token, ack, pod_uid):
            self.local_verifications += 1
            return Verdict(Check.VERIFIED)
        answer = await self._lookup(token, claims)
        if isinstance(answer, _Refused):
            return Verdict(answer.check, answer.detail)
        if (answer.namespace, answer.pod) != (ack.namespace, ack.pod):
            return Verdict(
                Check.FORGED,
                f"the ack speaks for pod {ack.namespace}/{ack.pod} but was sent with the token of pod "
                f"{answer.namespace}/{answer.pod}",
            )
        return Verdict(Check.VERIFIED)

    async def _verified_locally(self, token: str, ack: Ack, pod_uid: str | None) -> bool:
        """True when the token is the issuer's, for our audience, unexpired, and bound to
        exactly the pod ``ack`` speaks for (name and uid). False means "ask the API server".
        Without ``pod_uid`` (an ack for a round that has ended or is not known yet) only a
        token already verified for that pod's name counts: a late redelivery of a round's
        acks then costs no TokenReview."""
        if self.keys is None:
            return False
        key_id = hashlib.sha256(token.encode()).hexdigest()
        cached = self._local.get(key_id)
        if cached is not None and cached[1] > self._clock():
            return pod_uid is None or cached[0] == pod_uid
        if not pod_uid:
            return False
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return False
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg not in TOKEN_ALGORITHMS:
            return False
        key = await self.keys.key(kid)
        if key is None or self.keys.issuer is None:
            return False
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience, issuer=self.keys.issuer,
                                options={"require": ["exp", "iss", "aud"]}, leeway=0)
        except jwt.PyJWTError:
            return False
        k8s = claims.get("kubernetes.io")
        pod = k8s.get("pod") if isinstance(k8s, dict) else None
        if not (
            isinstance(k8s, dict)
            and isinstance(pod, dict)
            and k8s.get("namespace") == ack.namespace
            and pod.get("name") == ack.pod
            and pod.get("uid") == pod_uid
            and isinstance(claims.get("sub"), str)
            and str(claims["sub"]).startswith(f"{SA_PREFIX}{ack.namespace}:")
        ):
            return False
        lifetime = min(MAX_CACHE_SECONDS, float(claims["exp"]) - self._wall_clock())
        if lifetime > 0:
            self._local[key_id] = (pod_uid, self._clock() + lifetime)
            while len(self._local) > MAX_CACHED:
                self._local.popitem(last=False)
        return True

    def _precheck(self, ack: Ack, claims: Mapping[str, Any]) -> Verdict | None:
        """Refuse without a review what cannot pass one: a token for another audience,
        expired, or (per its own claims) of another pod. Never accepts anything."""
        audiences = claims.get("aud")
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or self.audience not in audiences:
            return Verdict(Check.INVALID, f"the identity token is not for audience {self.audience}")
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp <= self._wall_clock():
            return Verdict(Check.INVALID, "the identity token has expired")
        k8s = claims.get("kubernetes.io")
        pod = k8s.get("pod") if isinstance(k8s, dict) else None
        if isinstance(k8s, dict) and isinstance(pod, dict):
            claimed = (k8s.get("namespace"), pod.get("name"))
            if claimed != (ack.namespace, ack.pod):
                return Verdict(
                    Check.FORGED,
                    f"the ack speaks for pod {ack.namespace}/{ack.pod} but its token names pod "
                    f"{claimed[0]}/{claimed[1]}",
                )
        return None

    async def _lookup(self, token: str, claims: Mapping[str, Any]) -> PodToken | _Refused:
        key = hashlib.sha256(token.encode()).hexdigest()
        for cache in (self._cache, self._refused):
            cached = cache.get(key)
            if cached is not None:
                answer, until = cached
                if until > self._clock():
                    return answer
                del cache[key]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[PodToken | _Refused] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._ask(token)
        except BaseException:  # cancelled (shutdown): _ask turns every failure into a verdict
            future.cancel()
            raise
        finally:
            del self._inflight[key]
        future.set_result(answer)
        if isinstance(answer, PodToken):
            exp = claims.get("exp")
            lifetime = MAX_CACHE_SECONDS
            if isinstance(exp, int | float):
                lifetime = min(lifetime, float(exp) - self._wall_clock())
            self._remember(key, answer, lifetime)
        elif answer.check is not Check.UNVERIFIABLE:
            self._remember(key, answer, REFUSED_CACHE_SECONDS)
        return answer

    def _remember(self, key: str, answer: PodToken | _Refused, lifetime: float) -> None:
        if lifetime <= 0:
            return
        now = self._clock()
        cache = self._cache if isinstance(answer, PodToken) else self._refused
        if cache is self._refused:
            while self._refused and next(iter(self._refused.values()))[1] <= now:
                self._refused.popitem(last=False)
        cache[key] = (answer, now + lifetime)
        while len(cache) > MAX_CACHED:
            cache.popitem(last=False)

    async def _ask(self, token: str) -> PodToken | _Refused:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        last = ""
        for attempt in range(REVIEW_ATTEMPTS):
            async with self._slots:
                try:
                    self.reviews += 1
                    answer = await self.review(TOKEN_REVIEWS_PATH, body)
                    metrics.TOKEN_REVIEWS.labels(result="answered").inc()
                    return self._read(answer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    metrics.TOKEN_REVIEWS.labels(result="error").inc()
                    last = f"{type(exc).__name__}: {exc}"
                    log.warning("TokenReview failed (attempt %d/%d): %s", attempt + 1, REVIEW_ATTEMPTS, last)
            await asyncio.sleep(0.2 * 4**attempt)
        return _Refused(Check.UNVERIFIABLE, f"the API server could not review the identity token: {last}")

    def _read(self, answer: Any) -> PodToken | _Refused:
        status = answer.get("status") if isinstance(answer, dict) else None
        if not isinstance(status, dict) or not status.get("authenticated"):
            why = (status.get("error") if isinstance(status, dict) else None) or "not authenticated"
            return _Refused(Check.INVALID, f"the API server does not accept the identity token: {why}")
        if self.audience not in (status.get("audiences") or ()):
            return _Refused(Check.INVALID, f"the identity token is not valid for audience {self.audience}")
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        extra = user.get("extra") or {}
        names, uids = extra.get(EXTRA_POD_NAME) or [], extra.get(EXTRA_POD_UID) or []
        if not username.startswith(SA_PREFIX) or len(names) != 1 or len(uids) != 1:
            return _Refused(
                Check.INVALID,
                f"the identity token of {username or 'an unknown user'} is not a service-account token "
                "bound to a pod",
            )
        namespace = username.removeprefix(SA_PREFIX).split(":", 1)[0]
        return PodToken(namespace=namespace, pod=str(names[0]), pod_uid=str(uids[0]))


def _claims(token: str) -> dict[str, Any] | None:
    """The JWT's payload, unverified (None when unreadable)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None
