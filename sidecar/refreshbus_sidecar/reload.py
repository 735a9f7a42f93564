"""Tell the app to reload: a Unix signal, an HTTP call, or nothing.

Signals need a shared process namespace (``shareProcessNamespace: true``) and the right
to signal the app (same UID, or CAP_KILL). The app's process is found by a regular
expression searched in ``/proc/<pid>/cmdline`` (arguments joined by spaces) and
``/proc/<pid>/comm``; exactly one process must match.
"""

from __future__ import annotations

import http.client
import os
import re
import signal as signal_mod
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


class ReloadError(RuntimeError):
    """The reload action failed; the text says why and what to check."""


@dataclass(frozen=True, slots=True)
class ReloadAction:
    """One resolved action: the pod's default, possibly overridden by an event."""

    type: str  # "signal" | "http" | "none"
    signal: str = "SIGHUP"
    process: str | None = None
    url: str | None = None
    method: str = "POST"
    timeout: float = 5.0
    health_url: str | None = None
    health_timeout: float = 10.0

    def describe(self) -> str:
        if self.type == "signal":
            return f"{self.signal} to /{self.process}/"
        if self.type == "http":
            return f"{self.method} {self.url}"
        return "none"


def find_process(pattern: str, proc: Path = PROC) -> int:
    """The PID of the one live process whose command line or name matches ``pattern``.

    The sidecar itself and its ancestors are never candidates.

    Raises:
        ReloadError: no process, or more than one, matches.
    """
    regex = re.compile(pattern)
    own = {os.getpid(), os.getppid()}
    matches: list[tuple[int, str]] = []
    for entry in sorted(proc.iterdir(), key=lambda e: int(e.name) if e.name.isdigit() else -1):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in own:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            comm = (entry / "comm").read_text().strip()
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}:
            continue  # a zombie cannot reload anything
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if regex.search(cmdline) or regex.search(comm):
            matches.append((pid, cmdline or f"[{comm}]"))
    if not matches:
        raise ReloadError(
            f"no process matches /{pattern}/: is the app running, and does the pod set "
            "shareProcessNamespace: true?"
        )
    if len(matches) > 1:
        listed = "; ".join(f"{pid}: {cmd[:80]}" for pid, cmd in matches[:5])
        raise ReloadError(f"{len(matches)} processes match /{pattern}/ ({listed}); make the pattern specific")
    return matches[0][0]


#: pattern -> (pid, start time) of the process found last time. Reading every process's
#: cmdline takes milliseconds to tens of milliseconds on a busy node (the kernel takes each
#: process's mm lock), so a process that is still the same one is reused after one read of
#: its /proc/<pid>/stat. A restarted app has a new start time and triggers a full scan.
_found: dict[tuple[str, Path], tuple[int, str]] = {}


def _start_time(pid: int, proc: Path) -> str | None:
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in {"Z", "X"} or len(fields) < 20:
        return None
    return fields[19]  # field 22 of stat: start time in clock ticks since boot


def find_process_cached(pattern: str, proc: Path = PROC) -> int:
    """:func:`find_process`, reusing the last match while it is still the same process."""
    key = (pattern, proc)
    cached = _found.get(key)
    if cached is not None and _start_time(cached[0], proc) == cached[1]:
        return cached[0]
    _found.pop(key, None)
    pid = find_process(pattern, proc)
    start = _start_time(pid, proc)
    if start is not None:
        _found[key] = (pid, start)
    return pid


def send_signal(pattern: str, signal_name: str, proc: Path = PROC) -> int:
    """Signal the one matching process; returns its PID."""
    pid = find_process_cached(pattern, proc)
    signum = signal_mod.Signals[signal_name]
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        _found.pop((pattern, proc), None)
        raise ReloadError(f"process {pid} (/{pattern}/) exited before {signal_name} reached it") from None
    except PermissionError:
        raise ReloadError(
            f"not permitted to send {signal_name} to process {pid} (/{pattern}/): the sidecar must run "
            "as the app's UID or have the CAP_KILL capability"
        ) from None
    return pid


def http_call(url: str, method: str, timeout: float) -> int:
    """Call the app's reload endpoint; returns the 2xx status. Redirects are not followed.

    Raises:
        ReloadError: non-2xx answer, refused connection or timeout.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        port = -1
    if parts.scheme not in {"http", "https"} or not parts.hostname or port == -1:
        raise ReloadError(f"not an http(s) URL: {url!r}")
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, body=b"" if method in {"POST", "PUT"} else None,
                     headers={"User-Agent": "refreshbus-sidecar"})
        resp = conn.getresponse()
        body = resp.read(4096)
        status = int(resp.status)
    except TimeoutError:
        raise ReloadError(f"{method} {url} timed out after {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ReloadError(f"{method} {url} failed: {exc}") from None
    finally:
        conn.close()
    if not 200 <= status < 300:
        text = body[:300].decode(errors="replace").strip()
        raise ReloadError(f"{method} {url} answered HTTP {status}{': ' + text if text else ''}")
    return status


def wait_healthy(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 2xx or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    delay = 0.05
    while True:
        remaining = deadline - time.monotonic()
        try:
            http_call(url, "GET", max(0.05, min(remaining, 2.0)))
            return
        except ReloadError as exc:
            last = str(exc)
        if time.monotonic() + delay > deadline:
            raise ReloadError(f"app not healthy {timeout:g}s after reload: {last}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def run(action: ReloadAction) -> str:
    """Run the action (and the health wait); returns a short description of what was done.

    Raises:
        ReloadError: the reload (or the health check after it) failed.
    """
    if action.type == "none":
        done = "no reload action"
    elif action.type == "signal":
        if not action.process:
            raise ReloadError("signal action without a process pattern (REFRESHBUS_PROCESS)")
        pid = send_signal(action.process, action.signal)
        done = f"sent {action.signal} to pid {pid}"
    elif action.type == "http":
        if not action.url:
            raise ReloadError("http action without a URL")
        status = http_call(action.url, action.method, action.timeout)
        done = f"{action.method} {action.url} -> {status}"
    else:
        raise ReloadError(f"unknown reload action {action.type!r}")
    if action.health_url:
        wait_healthy(action.health_url, action.health_timeout)
        done += f"; {action.health_url} healthy"
    return done
