"""Small helpers shared by the broker and the control plane: free ports, waiting,
starting and stopping background processes that must never outlive their owner."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class InfraError(RuntimeError):
    """Test infrastructure could not be started; the message says what to look at."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, chosen OUTSIDE the
    kernel's ephemeral range.

    A server that tests stop and restart (the broker) must get its port back. Inside the
    ephemeral range the kernel may hand that very port to an outgoing connection -- or a
    client retrying ``connect(127.0.0.1:P)`` while nothing listens may be given local
    port P and connect to itself (TCP simultaneous open) -- and the restart then fails
    with EADDRINUSE.
    """
    low, high = _ephemeral_range()
    candidates = [p for p in range(10000, 32768) if not low <= p <= high] or list(range(1024, low))
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise InfraError("no free TCP port found outside the ephemeral range")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None, interval: float = 0.1,
) -> None:
    """Poll ``condition`` until true; fail with the log's tail if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise InfraError(f"{what}: process exited with code {proc.returncode}\n{tail(log)}")
        time.sleep(interval)
    raise InfraError(f"{what}: not ready after {timeout:.0f}s\n{tail(log)}")


def tail(log: Path | None, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {log} ---\n" + "\n".join(text)


def spawn(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a process in its own session (so its whole group can be stopped), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc


#: Processes started here, so they are reaped (and not reported as leaked) when stopped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM a process group, then SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                _reap(pid)
                return
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)


def _alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies count as gone:
    in a container nothing may reap them, and they hold no ports or files)."""
    proc = _CHILDREN.get(pgid)
    if proc is not None:
        proc.poll()
    else:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
