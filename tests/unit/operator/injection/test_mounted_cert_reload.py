"""cert-manager mode (manage_tls off): the webhook server re-reads the mounted pair as often
as it checks the caBundle, not hourly, and never serves a torn pair.

Real files rotated on disk the way the kubelet updates a Secret volume (a new timestamped
directory, then an atomic swap of the ``..data`` symlink), the real aiohttp HTTPS server,
and a real TLS client that verifies the chain against the CA of the moment.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from refreshbus_operator.injection import certs
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.webhook import WebhookServer
from refreshbus_operator.kube import Kube


class NoApi:
    """cert-manager mode needs no API access for its TLS: any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the webhook used the API ({name}) in cert-manager mode")


class SecretVolume:
    """A directory laid out and updated like a kubelet Secret volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()
        for name in (certs.TLS_CRT, certs.TLS_KEY):
            (root / name).symlink_to(Path("..data") / name)

    def publish(self, crt: bytes, key: bytes) -> None:
        self.version += 1
        target = self.root / f"..2026_12_02_01_00_{self.version:02d}"
        target.mkdir()
        (target / certs.TLS_CRT).write_bytes(crt)
        (target / certs.TLS_KEY).write_bytes(key)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def handshake(port: int, ca: bytes) -> bool:
    """A verifying TLS client: True when the served chain is trusted under ``ca``."""
    ctx = ssl.create_default_context(cadata=ca.decode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, ctx.wrap_socket(
            raw, server_hostname="127.0.0.1"
        ):
            return True
    except ssl.SSLError:
        return False


def wait_for(condition: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WebhookServer, SecretVolume, certs.Bundle]]:
    volume = SecretVolume(tmp_path / "tls")
    first = certs.new_bundle(["127.0.0.1"], 30)
    volume.publish(first.tls_crt, first.tls_key)
    config = InjectionConfig(
        manage_tls=False, cert_dir=str(volume.root), webhook_host="127.0.0.1", webhook_port=free_port(),
        webhook_configuration="",
    )
    server = WebhookServer(cast(Kube, NoApi()), config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    # The full check stays hourly (the default); the caBundle-check period is short here.
    started = server.start(check_interval=3600, ca_check_interval=0.2)
    asyncio.run_coroutine_threadsafe(started, loop).result(10)
    try:
        yield server, volume, first
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_renewed_pair_under_a_new_ca_is_served_within_the_ca_check_period(
    served: tuple[WebhookServer, SecretVolume, certs.Bundle],
) -> None:
    server, volume, first = served
    port = server.config.webhook_port
    assert handshake(port, first.ca_crt)

    # cert-manager renews with its self-signed issuer: new CA, new pair; cainjector puts
    # the new CA in the caBundle at once, so the API server trusts only the new one.
    second = certs.new_bundle(["127.0.0.1"], 30)
    volume.publish(second.tls_crt, second.tls_key)

    took = wait_for(lambda: handshake(port, second.ca_crt), 5, "the renewed certificate served")
    assert not handshake(port, first.ca_crt)
    assert took < 5  # hourly before the fix


def test_a_torn_pair_is_never_served_and_the_next_good_one_is(
    served: tuple[WebhookServer, SecretVolume, certs.Bundle],
) -> None:
    server, volume, first = served
    port = server.config.webhook_port
    second = certs.new_bundle(["127.0.0.1"], 30)

    # A certificate with a key that does not belong to it (a writer caught mid-rotation).
    volume.publish(second.tls_crt, first.tls_key)
    wait_for(lambda: not server.healthy, 5, "the torn pair noticed")
    for _ in range(5):  # loading it would have left the server with no certificate at all
        assert handshake(port, first.ca_crt)
        time.sleep(0.1)

    volume.publish(second.tls_crt, second.tls_key)
    wait_for(lambda: handshake(port, second.ca_crt), 10, "the good pair served after the torn one")
    wait_for(lambda: server.healthy, 5, "healthy again")
