"""The app never sees a half-written file, a missing key, or (reading through ``..data``)
a mix of two versions, while the sidecar swaps in new versions as fast as it can."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import create_pod
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult

from .conftest import Sidecars

pytestmark = pytest.mark.integration

SIZE = 200_000  # big enough that writing a version takes a while


def content(version: int, key: str) -> str:
    head = f"v{version:03d}:{key}:"
    return head + "x" * (SIZE - len(head))


class Reader(threading.Thread):
    """Loops over the files; records every inconsistency it sees."""

    def __init__(self, source: Path) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.rounds = 0
        self.versions: set[str] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.check_round()
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.rounds += 1

    def check_round(self) -> None:
        for key in ("a", "b"):  # through the visible per-key symlinks
            text = (self.source / key).read_text()
            if len(text) != SIZE or not text.startswith("v") or f":{key}:" not in text[:10]:
                self.errors.append(f"{key}: partial or foreign content ({len(text)} bytes)")
        fd = os.open(self.source / "..data", os.O_RDONLY | os.O_DIRECTORY)  # one version, pinned
        try:
            seen = []
            for key in ("a", "b"):
                kfd = os.open(key, os.O_RDONLY, dir_fd=fd)
                with os.fdopen(kfd) as fh:
                    seen.append(fh.read(4))
        finally:
            os.close(fd)
        if seen[0] != seen[1]:
            self.errors.append(f"mixed versions through ..data: {seen}")
        self.versions.add(seen[0])


def test_a_reader_never_sees_a_partial_missing_or_mixed_config_during_swaps(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus
) -> None:
    configs.put_configmap(cluster, namespace, "big", {"a": content(0, "a"), "b": content(0, "b")})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["big"], action={podc.ENV_ACTION: "none"})
    sidecar = sidecars.start(pod, env={podc.ENV_FETCH_JITTER: "0"})
    reader = Reader(sidecar.target_dir / "configmap-big")
    reader.start()
    try:
        for version in range(1, 16):
            rv = configs.put_configmap(cluster, namespace, "big",
                                       {"a": content(version, "a"), "b": content(version, "b")})
            event = make_event(namespace, [("ConfigMap", "big", rv)])
            bus.publish(event)
            assert bus.wait_ack(event.id).result is AckResult.OK
    finally:
        reader.stop.set()
        reader.join(timeout=10)

    assert reader.errors == []
    assert reader.rounds > 15
    assert len(reader.versions) > 1
    versions = [p.name for p in (sidecar.target_dir / "configmap-big").iterdir()
                if p.name.startswith("..") and p.name != "..data"]
    assert len(versions) == 2  # the current version and the previous one are kept, older ones cleaned
