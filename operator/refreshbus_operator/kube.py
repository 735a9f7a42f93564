"""A small JSON-in/JSON-out Kubernetes REST client on the operator's event loop.

Requests go through one aiohttp session (created on first use, closed by :meth:`Kube.aclose`)
so Kubernetes I/O shares kopf's event loop instead of worker threads. Credentials come only
from the official client's config loader (in-cluster service account, kubeconfig: CA,
client certificate, bearer token, auth providers and exec plugins as far as that loader
supports them).

Why not the generated API classes: we want plain dicts with the API's own camelCase
names (they go straight into status and tests), metadata-only reads
(``PartialObjectMetadata``: never pull Secret data we do not need), and one place that
counts requests for the ``refreshbus_operator_api_requests_total`` metric.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kubernetes
import orjson
from yarl import URL

from refreshbus_operator import metrics
from refreshbus_operator.broker import backoff
from refreshbus_operator.settings import Config

log = logging.getLogger(__name__)

METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
MERGE_PATCH = "application/merge-patch+json"

#: How often the credentials are asked for again: the in-cluster loader re-reads the
#: service-account token file (the kubelet rotates it) and an exec plugin runs again when
#: its credential expired. A 401 asks at once.
CREDENTIALS_TTL = 60.0

#: Backoff between two attempts of a read that failed on the way (exponential, jittered).
RETRY_INITIAL = 0.2
RETRY_MAX = 5.0


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, body: Any, retry_after: float | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.retry_after = retry_after
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status} {reason}: {message or body}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def transient(self) -> bool:
        """Throttled (429) or the server's own trouble (5xx): asking again later may succeed."""
        return self.status == 429 or self.status >= 500


class ConfigError(Exception):
    """No usable Kubernetes credentials."""


def load_configuration(kubeconfig: str | None = None) -> kubernetes.client.Configuration:
    """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(configuration)  # type: ignore[no-untyped-call]
            return configuration
        except kubernetes.config.ConfigException:
            pass
    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    except kubernetes.config.ConfigException as exc:
        raise ConfigError(f"no Kubernetes configuration (not in a cluster, no kubeconfig): {exc}") from exc
    if not configuration.auth_settings() and not configuration.cert_file:
        # The loader only logs a failed exec plugin; without this, every request would be a 401.
        raise ConfigError(
            f"the kubeconfig ({kubeconfig or 'KUBECONFIG / ~/.kube/config'}) gave no credentials: "
            "no token, no client certificate, or its exec plugin / auth provider failed (see the log)"
        )
    return configuration


def _ssl_context(configuration: kubernetes.client.Configuration) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _query(path: str, query: Mapping[str, Any] | None) -> str:
    if not query:
        return path
    return f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """The ``Retry-After`` seconds the API server asks for (it sends seconds, never a date)."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def transient_reason(exc: BaseException) -> str | None:
    """Why a failed call may succeed when asked again (the retry metric's ``reason``), or ``None``:
    a real answer."""
    if isinstance(exc, ApiError):
        if exc.status == 429:
            return "throttled"
        return "server_error" if exc.transient else None
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError)):
        return None  # the wrong server or CA: asking again cannot help
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)):
        return "connection"
    return None


def _decode(raw: bytes) -> Any:
    # orjson: a round's LIST of thousands of pods was a fifth of the operator's CPU in json.
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


class Kube:
    """JSON REST calls, each a coroutine on the running event loop.

    One instance per process (the operator keeps it in kopf's memo): its session holds the
    connection pool. Not shared across event loops."""

    def __init__(
        self,
        configuration: kubernetes.client.Configuration | None = None,
        timeout: float = 30.0,
        retry_timeout: float = 30.0,
    ) -> None:
        self.configuration = configuration or load_configuration()
        self.timeout = timeout
        #: How long a GET that failed on the way (connection reset/refused, timeout, 429,
        #: 5xx) is asked again before its error is raised.
        self.retry_timeout = retry_timeout
        self.requests = 0
        self._base = self.configuration.host.rstrip("/")
        self._ssl = _ssl_context(self.configuration)
        self._client_cert = (self.configuration.cert_file, self.configuration.key_file)
        self._session: aiohttp.ClientSession | None = None
        self._authorization: str | None = None
        self._credentials_at = -CREDENTIALS_TTL
        self._credentials_lock = asyncio.Lock()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pool limit: every watch holds a connection for its whole life, and the
            # auto-refresh supervisor bounds the number of watches itself.
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=0)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _credentials(self, renew: bool = False) -> dict[str, str]:
        async with self._credentials_lock:
            if renew or time.monotonic() - self._credentials_at >= CREDENTIALS_TTL:
                # The loader's refresh hook may read a file or run an exec plugin (a
                # subprocess): off the loop, once a minute at most.
                settings: Mapping[str, Any] = await asyncio.to_thread(self.configuration.auth_settings)
                self._authorization = (settings.get("BearerToken") or {}).get("value")
                self._credentials_at = time.monotonic()
                cert = (self.configuration.cert_file, self.configuration.key_file)
                if cert != self._client_cert and cert[0]:
                    self._ssl.load_cert_chain(cert[0], cert[1])  # an exec plugin's new client cert
                    self._client_cert = cert
        return {"Authorization": self._authorization} if self._authorization else {}

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        renew = False
        while True:
            all_headers = {**headers, **await self._credentials(renew)}
            response = await self._open().request(
                method,
                URL(self._base + url, encoded=True),
                headers=all_headers,
                data=data,
                proxy=self.configuration.proxy or None,
                server_hostname=self.configuration.tls_server_name or None,
                timeout=timeout,
            )
            log.debug('"%s %s" %d', method, url, response.status)
            if response.status != 401 or renew:
                return response
            response.release()
            renew = True  # a rotated token: ask the loader once more, then give up

    async def arequest(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> Any:
        """One request; a GET is retried with backoff for up to ``retry_timeout`` seconds when
        it failed on the way (a blip must not fail a refresh round), never on a real answer
        (404, 403, 422, ...). Writes are not: a POST whose answer was lost may have happened."""
        headers = {"Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            data = json.dumps(body).encode()
        url = _query(path, query)
        deadline = time.monotonic() + self.retry_timeout
        attempt = 0
        while True:
            try:
                return await self._attempt(method, url, headers, data)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = transient_reason(exc) if method == "GET" else None
                left = deadline - time.monotonic()
                if reason is None or left <= 0:
                    raise
                delay = backoff(attempt, RETRY_INITIAL, RETRY_MAX)
                if isinstance(exc, ApiError) and exc.retry_after is not None:
                    delay = exc.retry_after
                delay = min(delay, left)
                attempt += 1
                metrics.API_RETRIES.labels(verb="get", reason=reason).inc()
                log.info("GET %s failed (%s: %s); retry %d in %.1fs", path, reason, exc, attempt, delay)
            await asyncio.sleep(delay)

    async def _attempt(self, method: str, url: str, headers: Mapping[str, str], data: bytes | None) -> Any:
        self.requests += 1
        metrics.API_REQUESTS.labels(verb=method.lower()).inc()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        response = await self._send(method, url, headers, data, timeout)
        async with response:
            result = _decode(await response.read())
            if not 200 <= response.status <= 299:
                raise ApiError(response.status, str(response.reason), result, _retry_after(response))
        return result

    async def astream(
        self, path: str, query: Mapping[str, Any], read_timeout: float = 330.0
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A watch: yields each event (``{"type", "object"}``) as the API server sends it.

        Put the server-side bound in ``query`` (``timeoutSeconds``); ``read_timeout`` is the
        client's: a connection silent for that long (no event, no bookmark) fails with
        :class:`TimeoutError`, so a half-open connection cannot hang a watch forever."""
        self.requests += 1
        metrics.API_REQUESTS.labels(verb="watch").inc()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=read_timeout)
        response = await self._send("GET", _query(path, query), {"Accept": "application/json"}, None, timeout)
        async with response:
            if not 200 <= response.status <= 299:
                raise ApiError(response.status, str(response.reason), _decode(await response.read()))
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)

    # -- convenience -------------------------------------------------------------------

    async def aget(self, path: str, **query: Any) -> Any:
        return await self.arequest("GET", path, query)

    async def aget_metadata(self, path: str) -> dict[str, Any]:
        """Only the object's metadata: a Secret's data never leaves the API server."""
        data = await self.arequest("GET", path, accept=METADATA_ONLY)
        return dict(data or {})

    async def apatch(self, path: str, body: Any) -> Any:
        return await self.arequest("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def apost(self, path: str, body: Any) -> Any:
        return await self.arequest("POST", path, body=body)

    async def aput(self, path: str, body: Any) -> Any:
        return await self.arequest("PUT", path, body=body)

    async def adelete(self, path: str, **query: Any) -> Any:
        return await self.arequest("DELETE", path, query)


def in_memo(memo: MutableMapping[str, Any]) -> Kube:
    """The process's one Kube, kept in kopf's memo (``memo["kube"]``): the rounds, auto-refresh,
    injection and sidecar RBAC share its session. Closed by the operator's clean-up."""
    if memo.get("kube") is None:
        config: Config | None = memo.get("config")
        memo["kube"] = Kube(retry_timeout=config.api_retry_timeout) if config else Kube()
    shared: Kube = memo["kube"]
    return shared


# -- paths -----------------------------------------------------------------------------

_WORKLOAD_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


def q(name: str) -> str:
    return quote(name, safe="")


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{q(namespace)}/pods"


def workload_path(namespace: str, kind: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{q(namespace)}/{_WORKLOAD_PLURALS[kind]}/{q(name)}"


def workloads_path(namespace: str | None, kind: str) -> str:
    if namespace is None:
        return f"/apis/apps/v1/{_WORKLOAD_PLURALS[kind]}"
    return f"/apis/apps/v1/namespaces/{q(namespace)}/{_WORKLOAD_PLURALS[kind]}"


def source_path(namespace: str, kind: str, name: str) -> str:
    plural = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
    return f"/api/v1/namespaces/{q(namespace)}/{plural}/{q(name)}"


def cfr_path(namespace: str | None, name: str | None = None, status: bool = False) -> str:
    from refreshbus_operator import GROUP, PLURAL, VERSION

    base = f"/apis/{GROUP}/{VERSION}"
    if namespace is None:
        return f"{base}/{PLURAL}"
    path = f"{base}/namespaces/{q(namespace)}/{PLURAL}"
    if name is not None:
        path += f"/{q(name)}"
        if status:
            path += "/status"
    return path


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{q(namespace)}/events"
