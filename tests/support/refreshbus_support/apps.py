"""Real, unmodified apps for the sidecar to reload: Debian's nginx and a Node.js server.

Each runs as a foreground process in its own session on a free loopback port, reads its
config from the sidecar's shared directory, and exposes ``process_pattern`` -- a regex
unique to this instance, for ``REFRESHBUS_PROCESS``. Always ``stop()`` in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refreshbus_testenv.procs import free_port, port_open, spawn, stop_group, tail

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NODE = shutil.which("node") or "/usr/bin/node"
NODE_APP = Path(__file__).resolve().parents[1] / "apps" / "config-server.js"


class AppError(RuntimeError):
    """The app could not be started (the message carries its log)."""


@dataclass
class App:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    #: Regex matching only this instance's main process (for REFRESHBUS_PROCESS).
    process_pattern: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
        """GET a path: (status, body); (0, error text) if nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def wait_for(self, predicate: Any, path: str = "/", timeout: float = 10.0) -> str:
        """Poll GET ``path`` until ``predicate(body)`` is true; returns the body."""
        deadline = time.monotonic() + timeout
        last: tuple[int, str] = (0, "")
        while time.monotonic() < deadline:
            last = self.get(path)
            if last[0] == 200 and predicate(last[1]):
                return last[1]
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: GET {path} never satisfied the condition; last {last}\n"
                             f"{tail(self.log)}")

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_group(self.proc.pid, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _wait_listening(app: App, timeout: float) -> App:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            raise AppError(f"{app.name} exited with {app.proc.returncode}\n{tail(app.log)}")
        if port_open(app.port):
            return app
        time.sleep(0.05)
    app.stop()
    raise AppError(f"{app.name} not listening on {app.port} after {timeout}s\n{tail(app.log)}")


def start_nginx(workdir: Path, include_dir: Path, *, port: int | None = None, timeout: float = 10.0) -> App:
    """Run nginx (master in the foreground, ``daemon off``) serving one server on a free port.

    Its ``server {}`` block includes ``<include_dir>/*.conf`` -- point that at a sidecar
    source directory (e.g. ``<target>/configmap-web``) whose ConfigMap holds
    ``location`` blocks such as ``location / { return 200 "v1\\n"; }``. Before the
    sidecar wrote anything, ``/`` answers 404.
    """
    if not Path(NGINX).exists():
        raise AppError("nginx is not installed: `apt-get install -y nginx` (see `make deps`)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""\
worker_processes 1;
error_log {workdir}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        include {include_dir}/*.conf;
    }}
}}
""")
    log = workdir / "nginx.out"
    proc = spawn([NGINX, "-p", str(workdir), "-c", str(conf), "-g", f"daemon off; pid {workdir}/nginx.pid;"],
                 log)
    pattern = rf"^nginx: master process .* -c {re.escape(str(conf))}"
    return _wait_listening(App("nginx", proc, port, log, pattern), timeout)


def start_node_app(
    workdir: Path, config_file: Path, *, port: int | None = None, journal: Path | None = None,
    timeout: float = 10.0,
) -> App:
    """Run tests/support/apps/config-server.js, which serves the JSON in ``config_file``
    at ``GET /`` and re-reads it on SIGHUP or ``POST /-/reload`` (500 if invalid).

    With ``journal`` every load is checked for a torn read and recorded there
    (:func:`read_journal`; the format is in the script's header)."""
    if not Path(NODE).exists():
        raise AppError("node is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "node.out"
    env = {"CONFIG_SERVER_JOURNAL": str(journal)} if journal is not None else None
    proc = spawn([NODE, str(NODE_APP), str(port), str(config_file)], log, env=env)
    pattern = rf"config-server\.js {port} {re.escape(str(config_file))}$"
    return _wait_listening(App("node", proc, port, log, pattern), timeout)


def read_journal(journal: Path) -> list[dict[str, Any]]:
    """The loads a journaling Node app recorded, oldest first (a line still being written
    is left for the next call)."""
    try:
        text = journal.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def node_config(app: App) -> Any:
    """The config the Node app currently serves (parsed), or None."""
    status, body = app.get("/")
    assert status == 200, body
    return json.loads(body)["config"]
