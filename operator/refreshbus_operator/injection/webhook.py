"""The injection webhook at work: HTTPS server, TLS Secret, caBundle patching.

Why a small aiohttp server and not ``@kopf.on.mutate``: kopf turns a handler's ``patch``
into a merge-style diff (no "insert the sidecar first" JSONPatch, no own rejection
status), its ``WebhookServer`` only yields ``url:`` client configs (the API server
cannot resolve in-cluster DNS for those), and the Helm chart owns the
MutatingWebhookConfiguration anyway (``service:`` clientConfig). This module serves
AdmissionReview v1 on ``POST /mutate-pods`` and ``GET /healthz``, answers with the
JSONPatch from :func:`.mutation.decide`, and keeps the TLS Secret and the
configuration's caBundle current. It runs inside the operator (handlers/injection.py)
or on its own: ``python -m refreshbus_operator.injection --help``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from refreshbus_operator.broker import backoff
from refreshbus_operator.injection import certs
from refreshbus_operator.injection.config import (
    NAMESPACE_LABEL,
    NAMESPACE_OPT_IN,
    NAMESPACE_OPT_OUT,
    WEBHOOK_NAME,
    WEBHOOK_PATH,
    InjectionConfig,
)
from refreshbus_operator.injection.mutation import Decision, decide
from refreshbus_operator.injection.options import wants_injection
from refreshbus_operator.injection.security import Namespace
from refreshbus_operator.kube import ApiError, Kube, q, source_path

log = logging.getLogger("refreshbus.injection")

JSON_PATCH = "application/json-patch+json"
MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
_ANN_FOR_KIND = {"ConfigMap": "refreshbus.io/configmaps", "Secret": "refreshbus.io/secrets"}


# -- the webhook configuration (what the chart renders; tests register it for real) -----


def webhook_configuration(
    config: InjectionConfig,
    ca_bundle: bytes | None = None,
    *,
    url: str | None = None,
    service_namespace: str | None = None,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration for this injector.

    ``url`` mode is for a local API server (tests); in a cluster the chart uses
    ``service:`` (``service_namespace`` here), because the API server cannot resolve
    cluster DNS names in a ``url``.
    """
    client: dict[str, Any]
    if url is not None:
        client = {"url": url.rstrip("/") + WEBHOOK_PATH}
    else:
        client = {
            "service": {
                "name": config.service_name,
                "namespace": service_namespace or config.operator_namespace,
                "path": WEBHOOK_PATH,
                "port": 443,
            }
        }
    if ca_bundle:
        client["caBundle"] = base64.b64encode(ca_bundle).decode()
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": config.webhook_configuration,
            "labels": {
                "app.kubernetes.io/name": "refreshbus",
                "app.kubernetes.io/component": "sidecar-injector",
            },
        },
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "clientConfig": client,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                # Opt-in is an annotation, which selectors cannot see: every pod outside the
                # excluded namespaces is sent, and the webhook decides.
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": sorted(config.excluded()),
                        },
                        {"key": NAMESPACE_LABEL, "operator": "In", "values": [NAMESPACE_OPT_IN]}
                        if config.namespace_opt_in
                        else {"key": NAMESPACE_LABEL, "operator": "NotIn", "values": [NAMESPACE_OPT_OUT]},
                    ]
                },
                "failurePolicy": config.failure_policy,
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "reinvocationPolicy": "IfNeeded",
                "matchPolicy": "Equivalent",
            }
        ],
    }


async def patch_ca_bundle(kube: Kube, name: str, ca_pem: bytes, attempts: int = 5) -> bool:
    """Set caBundle on every webhook of the named configuration; True if it changed.
    The patch is guarded by the resourceVersion it was computed from (another replica,
    or Helm, may write at the same time); on a clash it is recomputed."""
    wanted = base64.b64encode(ca_pem).decode()
    for attempt in range(attempts):
        current = await kube.aget(f"{MWC_PATH}/{q(name)}")
        ops = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted}
            for i, hook in enumerate(current.get("webhooks") or [])
            if (hook.get("clientConfig") or {}).get("caBundle") != wanted
        ]
        if not ops:
            return False
        rv = current["metadata"]["resourceVersion"]
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        try:
            await kube.arequest("PATCH", f"{MWC_PATH}/{q(name)}", body=ops, content_type=JSON_PATCH)
        except ApiError as exc:
            if exc.status in {409, 422} and attempt + 1 < attempts:
                continue
            raise
        log.info("patched caBundle of MutatingWebhookConfiguration %s", name)
        return True
    return False


# -- the TLS Secret ----------------------------------------------------------------------


def _secret_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{q(namespace)}/secrets"
    return f"{base}/{q(name)}" if name else base


async def ensure_tls(kube: Kube, config: InjectionConfig, names: Sequence[str]) -> certs.Bundle:
    """Read the TLS Secret, renew what needs renewing, write it back (optimistic
    concurrency: another replica may do the same; the loser re-reads)."""
    for _ in range(5):
        try:
            secret = await kube.aget(_secret_path(config.operator_namespace, config.tls_secret))
        except ApiError as exc:
            if not exc.not_found:
                raise
            secret = None
        data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
        current = certs.Bundle.from_data(data)
        fresh = certs.renew(current, names, config.cert_validity_days, config.cert_renew_before_days)
        if fresh is None:
            assert current is not None
            return current
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": config.tls_secret,
                "namespace": config.operator_namespace,
                "labels": {
                    "app.kubernetes.io/name": "refreshbus",
                    "app.kubernetes.io/component": "sidecar-injector",
                },
            },
            "data": {k: base64.b64encode(v).decode() for k, v in fresh.as_data().items()},
        }
        try:
            if secret is None:
                await kube.apost(_secret_path(config.operator_namespace), body)
            else:
                body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                await kube.aput(_secret_path(config.operator_namespace, config.tls_secret), body)
        except ApiError as exc:
            if exc.conflict:
                continue
            raise
        log.info(
            "wrote webhook certificate for %s (expires %s)",
            ", ".join(names),
            certs.expires(fresh.tls_crt).isoformat(),
        )
        return fresh
    raise RuntimeError(f"could not write Secret {config.tls_secret}: kept conflicting")


def write_files(bundle: certs.Bundle, cert_dir: str) -> tuple[Path, Path]:
    directory = Path(cert_dir)
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / certs.TLS_CRT, directory / certs.TLS_KEY
    for path, content in ((crt, bundle.tls_crt), (key, bundle.tls_key)):
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        tmp.replace(path)
    return crt, key


# -- admission ---------------------------------------------------------------------------


def review_response(uid: str, decision: Decision) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {
            "code": 403,
            "reason": "Forbidden",
            "message": f"refreshbus sidecar injection: {decision.message}",
        }
    elif decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(decision.patch).encode()).decode()
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class Injector:
    """Turns one AdmissionReview request into a response (API lookups included)."""

    def __init__(self, kube: Kube, config: InjectionConfig) -> None:
        self.kube = kube
        self.config = config

    async def review(self, request: Mapping[str, Any]) -> Decision:
        pod = request.get("object") or {}
        if request.get("operation", "CREATE") != "CREATE" or not wants_injection(pod):
            return Decision(allowed=True, message="not opted in")
        ns_name = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
        ns = await self.kube.aget_metadata(f"/api/v1/namespaces/{q(ns_name)}")
        namespace = Namespace(ns_name, dict((ns.get("metadata") or {}).get("labels") or {}))
        decision = decide(pod, namespace, self.config)
        if not decision.injected:
            return decision
        missing: list[str] = []
        for kind, name in decision.sources:
            try:
                await self.kube.aget_metadata(source_path(ns_name, kind, name))
            except ApiError as exc:
                if not exc.not_found:
                    raise
                missing.append(
                    f"{_ANN_FOR_KIND[kind]} names {kind} {name!r}, which does not exist in "
                    f"namespace {ns_name}"
                )
        if missing:
            return Decision(allowed=False, message="; ".join(missing))
        return decision


_INJECTOR = web.AppKey("injector", Injector)


async def _handle(request: web.Request) -> web.Response:
    injector = request.app[_INJECTOR]
    try:
        review = await request.json()
        req = review["request"]
        uid = req["uid"]
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": "expected an admission.k8s.io/v1 AdmissionReview"}, status=400)
    try:
        decision = await injector.review(req)
    except Exception:
        # A 500 makes the API server apply the webhook's failurePolicy.
        log.exception("injection failed for %s/%s", req.get("namespace"), req.get("name"))
        return web.json_response({"error": "internal error"}, status=500)
    obj = req.get("object") or {}
    meta = obj.get("metadata") or {}
    log.info(
        "pod %s/%s: %s%s",
        req.get("namespace"),
        meta.get("name") or meta.get("generateName", ""),
        "refused: " if not decision.allowed else "",
        decision.message,
    )
    return web.json_response(review_response(uid, decision))


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


class WebhookServer:
    """The HTTPS server plus the certificate upkeep loop."""

    def __init__(self, kube: Kube, config: InjectionConfig, extra_names: Sequence[str] = ()) -> None:
        self.kube = kube
        self.config = config
        self.names = [
            *certs.service_names(config.service_name, config.operator_namespace),
            *config.extra_names,
            *extra_names,
        ]
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self.bundle: certs.Bundle | None = None
        self._mounted: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._upkeep: asyncio.Task[None] | None = None
        #: False while the last certificate upkeep or caBundle patch failed: the upkeep loop
        #: then retries within seconds (with backoff), not after ``check_interval``.
        self.healthy = False
        self._ca_failing = False

    async def refresh_tls(self) -> bool:
        """Renew if needed, load the serving cert, patch the caBundle. True if anything changed.

        With ``manage_tls`` off (cert-manager), only (re)load tls.crt/tls.key from
        ``cert_dir`` when their content changed; the caBundle is someone else's job
        (cert-manager's CA injector). A caBundle that cannot be patched (configuration not
        created yet, API trouble) is logged and leaves :attr:`healthy` False; certificate
        trouble raises."""
        self.healthy = False
        if not self.config.manage_tls:
            changed = self._load_mounted()
            self.healthy = True
            return changed
        bundle = await ensure_tls(self.kube, self.config, self.names)
        changed = bundle != self.bundle
        if changed:
            crt, key = write_files(bundle, self.config.cert_dir)
            self.ssl.load_cert_chain(crt, key)  # new handshakes use it; no restart
            self.bundle = bundle
        return await self.sync_ca_bundle() or changed

    async def sync_ca_bundle(self) -> bool:
        """Make the configuration's caBundle our CA (one GET when it already is). True if it
        was patched; sets :attr:`healthy` (False: not found yet, or the API refused).

        With ``manage_tls`` off the caBundle is not ours; the mounted pair is re-read
        instead, on the same short period: cert-manager renews it whenever it likes (with a
        self-signed issuer, under a new CA that its CA injector puts in the caBundle at
        once), so an hourly re-read left the API server rejecting the old certificate."""
        self.healthy = False
        if not self.config.manage_tls:
            changed = self._load_mounted()
            self.healthy = True
            return changed
        if not self.config.webhook_configuration or self.bundle is None:
            self.healthy = self.bundle is not None
            return False
        name = self.config.webhook_configuration
        try:
            changed = await patch_ca_bundle(self.kube, name, self.bundle.ca_crt)
        except ApiError as exc:
            # Warn once per outage; the retries (every few seconds) log at debug level.
            say = log.debug if self._ca_failing else log.warning
            self._ca_failing = True
            if exc.not_found:
                say("MutatingWebhookConfiguration %s not found (yet); caBundle not patched, retrying", name)
            else:
                say("could not patch the caBundle of MutatingWebhookConfiguration %s, retrying: %s",
                    name, exc)
            return False
        self.healthy, self._ca_failing = True, False
        return changed

    def _load_mounted(self) -> bool:
        directory = Path(self.config.cert_dir)
        crt_pem = (directory / certs.TLS_CRT).read_bytes()
        key_pem = (directory / certs.TLS_KEY).read_bytes()
        if crt_pem + key_pem == self._mounted:
            return False
        # Load one snapshot of the pair, tried on a scratch context first: OpenSSL drops the
        # served certificate when a key that does not match follows it, so a pair read
        # mid-rotation (or just wrong) must fail here and leave the old one serving.
        with tempfile.TemporaryDirectory(prefix="refreshbus-webhook-") as scratch:
            crt, key = Path(scratch) / certs.TLS_CRT, Path(scratch) / certs.TLS_KEY
            crt.write_bytes(crt_pem)
            key.write_bytes(key_pem)
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(crt, key)
            self.ssl.load_cert_chain(crt, key)
        self._mounted = crt_pem + key_pem
        log.info(
            "loaded webhook certificate from %s (expires %s)",
            directory,
            certs.expires(crt_pem).isoformat(),
        )
        return True

    async def start(
        self,
        check_interval: float = 3600.0,
        ca_check_interval: float = 10.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        """Serve; keep the certificate current (every ``check_interval``) and the caBundle in
        place (checked every ``ca_check_interval``: Helm may recreate the configuration
        without it, e.g. ``helm upgrade --force``); a mounted pair (``manage_tls`` off) is
        re-read every ``ca_check_interval``. After a failure, retry from
        ``retry_initial`` doubling up to ``retry_max`` seconds."""
        await self.refresh_tls()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app[_INJECTOR] = Injector(self.kube, self.config)
        app.router.add_post(WEBHOOK_PATH, _handle)
        app.router.add_get("/healthz", _healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.webhook_host, self.config.webhook_port, ssl_context=self.ssl
        )
        await site.start()
        log.info(
            "injection webhook listening on https://%s:%d%s",
            self.config.webhook_host,
            self.config.webhook_port,
            WEBHOOK_PATH,
        )
        self._upkeep = asyncio.create_task(
            self._keep_tls(check_interval, ca_check_interval, retry_initial, retry_max)
        )

    async def _keep_tls(self, interval: float, ca_interval: float, initial: float, maximum: float) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time() + interval
        tls_ok, attempt = True, 0
        while True:
            if self.healthy and tls_ok:
                attempt = 0
                delay = max(0.0, min(ca_interval, next_full - loop.time()))
            else:
                delay = backoff(attempt, initial, maximum)
                attempt += 1
            await asyncio.sleep(delay)
            try:
                if not tls_ok or loop.time() >= next_full:
                    tls_ok = False
                    await self.refresh_tls()
                    tls_ok, next_full = True, loop.time() + interval
                else:
                    await self.sync_ca_bundle()
            except Exception:
                log.exception("webhook certificate upkeep failed; retrying with backoff")

    async def stop(self) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
        if self._runner is not None:
            await self._runner.cleanup()
