"""The stdlib API client against a local stub HTTP server (status handling only; the
real API server is exercised by the integration tests)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from refreshbus_sidecar.kubeapi import (
    Credentials,
    ForbiddenError,
    KubeClient,
    NotFoundError,
    ServerError,
    UnauthorizedError,
)

ANSWERS = {
    "ok": (200, {"kind": "ConfigMap", "metadata": {"name": "ok", "resourceVersion": "7"},
                 "data": {"a": "1"}}),
    "gone": (404, {"kind": "Status", "reason": "NotFound", "message": 'configmaps "gone" not found'}),
    "secret": (403, {"kind": "Status", "message": 'configmaps "secret" is forbidden: User "x" cannot get'}),
    "broken": (500, {"kind": "Status", "message": "etcdserver: request timed out"}),
    "busy": (429, {"kind": "Status", "message": "too many requests"}),
    "who": (401, {"kind": "Status", "message": "Unauthorized"}),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        Handler.seen.append((self.path, self.headers.get("Authorization")))
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        status, body = ANSWERS.get(name, (404, {}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def client(tmp_path: Path) -> Iterator[KubeClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    api = KubeClient(Credentials(server=f"http://127.0.0.1:{server.server_address[1]}", ca_file=None,
                                 token_file=str(token)))
    try:
        yield api
    finally:
        api.close()
        server.shutdown()
        server.server_close()


def test_a_configmap_is_fetched_with_the_current_token(client: KubeClient, tmp_path: Path) -> None:
    Handler.seen.clear()
    obj = client.get("ConfigMap", "shop", "ok")
    (tmp_path / "token").write_text("tok-2\n")  # rotated, as bound tokens are
    client.get("ConfigMap", "shop", "ok")

    assert obj["data"] == {"a": "1"}
    assert Handler.seen == [("/api/v1/namespaces/shop/configmaps/ok", "Bearer tok-1"),
                            ("/api/v1/namespaces/shop/configmaps/ok", "Bearer tok-2")]


def test_a_get_not_older_than_a_version_asks_for_it(client: KubeClient) -> None:
    """The API server answers such a GET from its watch cache, not from etcd."""
    Handler.seen.clear()
    client.get("ConfigMap", "shop", "ok", not_older_than="42")

    assert Handler.seen[0][0] == "/api/v1/namespaces/shop/configmaps/ok?resourceVersion=42"


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("gone", NotFoundError, "ConfigMap shop/gone not found"),
        ("secret", ForbiddenError,
         r"forbidden: cannot get ConfigMap shop/secret .*resourceNames: \[secret\]"),
        ("broken", ServerError, "HTTP 500 etcdserver: request timed out"),
        ("busy", ServerError, "HTTP 429"),
        ("who", UnauthorizedError, "rejected the sidecar's credentials"),
    ],
)
def test_api_errors_are_typed_and_say_what_to_fix(
    client: KubeClient, name: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        client.get("ConfigMap", "shop", name)


def test_an_unreachable_server_is_a_server_error() -> None:
    api = KubeClient(Credentials(server="http://127.0.0.1:1", ca_file=None), timeout=1)

    with pytest.raises(ServerError, match=r"127\.0\.0\.1:1"):
        api.get("Secret", "shop", "x")
