"""Real ``refreshbus-sidecar`` processes for pods created by :mod:`refreshbus_support.pods`.

The process gets the pod's sidecar env (identity, sources, action) plus what a real pod
would mount: broker URLs in a file, a kubeconfig (instead of the service-account token),
the shared target directory and a free health port. Use :func:`start_sidecar` in a
fixture with ``try/finally: sidecar.stop()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refreshbus_testenv.procs import free_port, stop_group, tail
from refreshbus_wire import pods as podc

from refreshbus_support.pods import TestPod

#: The console script installed in the same venv as the running interpreter.
SIDECAR_BIN = Path(sys.executable).parent / "refreshbus-sidecar"

#: Test-friendly tuning: short jitter and reconnect delays (overridable via ``env``).
TEST_DEFAULTS = {
    podc.ENV_FETCH_JITTER: "0.05",
    podc.ENV_RECONNECT_INITIAL: "0.2",
    podc.ENV_RECONNECT_MAX: "2",
    podc.ENV_HEALTH_BIND: "127.0.0.1",
    podc.ENV_LOG_LEVEL: "INFO",
}


@dataclass
class Sidecar:
    """One running sidecar process."""

    pod: TestPod
    proc: subprocess.Popen[bytes]
    target_dir: Path
    health_port: int
    log: Path
    env: Mapping[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.health_port}{path}"

    def probe(self, path: str) -> tuple[int, str]:
        """GET a health path: (status, body); (0, error) if nothing answers."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    @property
    def ready(self) -> bool:
        return self.probe("/readyz")[0] == 200

    @property
    def consuming(self) -> bool:
        """Whether the sidecar is connected to the broker (its queue and bindings exist)."""
        status, body = self.probe("/readyz")
        try:
            return status in (200, 503) and bool(json.loads(body).get("broker"))
        except ValueError:
            return False

    def wait_ready(self, timeout: float = 15.0, *, consuming: bool = True) -> None:
        """Wait for /readyz = 200 (and, with ``consuming``, for the broker connection, so that
        events published from now on reach it); fail with the sidecar's log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}\n{self.logs_tail()}")
            if self.ready and (not consuming or self.consuming):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"sidecar not ready after {timeout}s: {self.probe('/readyz')}\n{self.logs_tail()}")

    def wait_consuming(self, timeout: float = 15.0) -> None:
        """Wait for the broker connection only (for sidecars that cannot become ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}\n{self.logs_tail()}")
            if self.consuming:
                return
            time.sleep(0.05)
        raise AssertionError(f"sidecar not consuming after {timeout}s\n{self.logs_tail()}")

    def metrics(self) -> dict[str, float]:
        """Parsed /metrics: ``name{labels}`` -> value."""
        status, body = self.probe("/metrics")
        assert status == 200, body
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def log_records(self) -> list[dict[str, Any]]:
        """The sidecar's JSON log lines, parsed (non-JSON lines are skipped)."""
        records = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def logs_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (then SIGKILL after ``timeout``); returns the exit code."""
        if self.proc.poll() is None:
            stop_group(self.proc.pid, timeout=timeout)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None


def sidecar_env(
    pod: TestPod,
    *,
    broker_urls: Sequence[str],
    kubeconfig: str | Path,
    target_dir: Path,
    workdir: Path,
    health_port: int,
    env: Mapping[str, str] | None = None,
    ack_token: str | None = None,
) -> dict[str, str]:
    """The complete environment of a sidecar process for ``pod``."""
    workdir.mkdir(parents=True, exist_ok=True)
    urls_file = workdir / "broker-urls"
    urls_file.write_text("\n".join(broker_urls) + "\n")
    urls_file.chmod(0o600)
    out = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        **TEST_DEFAULTS,
        **pod.sidecar_env,
        podc.ENV_BROKER_URLS_FILE: str(urls_file),
        podc.ENV_KUBECONFIG: str(kubeconfig),
        podc.ENV_TARGET_DIR: str(target_dir),
        podc.ENV_HEALTH_PORT: str(health_port),
        podc.ENV_POD_UID: pod.uid,
    }
    if ack_token is not None:
        # What the injector's projected volume holds (the kubelet writes it the same way).
        token_file = workdir / "ack-token"
        token_file.write_text(ack_token)
        token_file.chmod(0o600)
        out[podc.ENV_ACK_TOKEN_FILE] = str(token_file)
    out.update(env or {})
    return out


def start_sidecar(
    pod: TestPod,
    *,
    broker_urls: Sequence[str],
    kubeconfig: str | Path,
    target_dir: Path,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = ("run",),
    wait_ready: bool = True,
    timeout: float = 15.0,
    ack_token: str | None = None,
) -> Sidecar:
    """Start ``refreshbus-sidecar run`` for ``pod``; by default wait until /readyz says 200
    and the sidecar consumes from its queue.

    Args:
        broker_urls: e.g. ``[broker.url("refreshbus-sidecar")]`` (written to a 0600 file).
        kubeconfig: JSON kubeconfig the sidecar uses instead of a service-account token.
        target_dir: the shared volume; each source lands in ``<target_dir>/configmap-<name>/``.
        workdir: where the log (``sidecar.log``) and the broker-URL file go.
        env: overrides, e.g. ``{podc.ENV_FETCH_JITTER: "0"}``.
        ack_token: the pod's identity token for its acks (see
            :func:`refreshbus_support.pods.ack_token`); an operator in ``require`` mode
            refuses acks without one.
    """
    health_port = free_port()
    full_env = sidecar_env(pod, broker_urls=broker_urls, kubeconfig=kubeconfig, target_dir=target_dir,
                           workdir=workdir, health_port=health_port, env=env, ack_token=ack_token)
    log = workdir / "sidecar.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([str(SIDECAR_BIN), *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env, start_new_session=True)
    sidecar = Sidecar(pod=pod, proc=proc, target_dir=target_dir, health_port=health_port, log=log,
                      env=full_env)
    if wait_ready:
        try:
            sidecar.wait_ready(timeout)
        except BaseException:
            sidecar.stop()
            raise
    return sidecar
