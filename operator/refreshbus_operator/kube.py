"""A small JSON-in/JSON-out Kubernetes REST client on top of the official client's
authentication (kubeconfig, in-cluster service account, exec plugins).

Why not the generated API classes: we want plain dicts with the API's own camelCase
names (they go straight into status and tests), metadata-only reads
(``PartialObjectMetadata``: never pull Secret data we do not need), and one place that
counts requests for the ``refreshbus_operator_api_requests_total`` metric. Calls are
blocking; async code uses the ``a*`` wrappers, which run them in worker threads so
kopf's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes

from refreshbus_operator import metrics

METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, body: Any) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status} {reason}: {message or body}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    try:
        if kubeconfig is None:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        pass
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, client_configuration=configuration
    )
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Blocking JSON REST calls; thread-safe (urllib3 pool)."""

    def __init__(self, client: kubernetes.client.ApiClient | None = None, timeout: float = 30.0) -> None:
        self.client = client or load_client()
        self.timeout = timeout
        self._lock = threading.Lock()
        self.requests = 0

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> Any:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        params = self.client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        with self._lock:
            self.requests += 1
        metrics.API_REQUESTS.labels(verb=method.lower()).inc()
        response = self.client.call_api(*params, _request_timeout=self.timeout)
        raw = response.read()  # type: ignore[no-untyped-call]
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, str(response.reason), data)
        return data

    def stream(self, path: str, query: Mapping[str, Any], timeout: float = 330.0) -> Iterator[dict[str, Any]]:
        """A watch: yields each event (``{"type", "object"}``) as the API server sends it."""
        path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        params = self.client.param_serialize(
            method="GET",
            resource_path=path,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        with self._lock:
            self.requests += 1
        metrics.API_REQUESTS.labels(verb="watch").inc()
        response = self.client.call_api(*params, _request_timeout=(10, timeout))
        raw = response.response
        try:
            if not 200 <= response.status <= 299:
                data = raw.read()
                raise ApiError(response.status, str(response.reason), data.decode(errors="replace"))
            buffer = b""
            for chunk in raw.stream(8192, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.release_conn()

    # -- convenience -------------------------------------------------------------------

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query)

    def get_metadata(self, path: str) -> dict[str, Any]:
        """Only the object's metadata: a Secret's data never leaves the API server."""
        data = self.request("GET", path, accept=METADATA_ONLY)
        return dict(data or {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def delete(self, path: str, **query: Any) -> Any:
        return self.request("DELETE", path, query)

    # -- async wrappers ----------------------------------------------------------------

    async def aget(self, path: str, **query: Any) -> Any:
        return await asyncio.to_thread(self.get, path, **query)

    async def aget_metadata(self, path: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.get_metadata, path)

    async def apatch(self, path: str, body: Any) -> Any:
        return await asyncio.to_thread(self.patch, path, body)

    async def apost(self, path: str, body: Any) -> Any:
        return await asyncio.to_thread(self.post, path, body)

    async def adelete(self, path: str, **query: Any) -> Any:
        return await asyncio.to_thread(self.delete, path, **query)


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
