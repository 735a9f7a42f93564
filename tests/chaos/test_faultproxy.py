"""The fault proxy the chaos suite puts in front of kube-apiserver, against a real TCP echo
server on loopback."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from refreshbus_support.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = FaultProxy(server.server_address[1]).start()
    try:
        yield p
    finally:
        p.stop()
        server.shutdown()
        server.server_close()


def _connect(p: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.listen_port), timeout=5)


def _echo(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    return sock.recv(65536)


def test_pass_forwards_both_ways(proxy):
    with _connect(proxy) as s:
        assert _echo(s) == b"ping"


def test_delay_holds_requests_on_open_connections_too(proxy):
    with _connect(proxy) as s:
        assert _echo(s) == b"ping"
        proxy.set_mode("delay", 0.5)
        started = time.monotonic()
        assert _echo(s) == b"ping"
        assert time.monotonic() - started >= 0.5


def test_blackhole_answers_nothing_until_cut(proxy):
    proxy.set_mode("blackhole")
    with _connect(proxy) as s:
        s.settimeout(0.5)
        s.sendall(b"ping")
        with pytest.raises(TimeoutError):
            s.recv(1)
        proxy.set_mode("pass")
        proxy.cut()
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the proxy: the client sees EOF and retries


def test_reset_closes_new_connections(proxy):
    proxy.set_mode("reset")
    with _connect(proxy) as s:
        s.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # closed either way: EOF or reset
            assert s.recv(1) == b""
    proxy.set_mode("pass")
    with _connect(proxy) as s:
        assert _echo(s) == b"ping"


def test_bad_mode_is_refused(proxy):
    with pytest.raises(ValueError, match="mode must be one of"):
        proxy.set_mode("slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a delay"):
        proxy.set_mode("delay")
