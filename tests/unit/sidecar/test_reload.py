from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from refreshbus_sidecar import reload
from refreshbus_sidecar.reload import ReloadAction, ReloadError


def fake_proc(
    root: Path, pid: int, cmdline: list[str], comm: str, state: str = "S", start: int = 100
) -> None:
    entry = root / str(pid)
    entry.mkdir()
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    (entry / "comm").write_text(comm + "\n")
    (entry / "stat").write_text(f"{pid} ({comm}) {state} " + "0 " * 18 + str(start))


@pytest.fixture
def proc_dir(tmp_path: Path) -> Path:
    fake_proc(tmp_path, 101, ["nginx: master process /usr/sbin/nginx -c /etc/nginx/nginx.conf"], "nginx")
    fake_proc(tmp_path, 102, ["nginx: worker process"], "nginx")
    fake_proc(tmp_path, 103, ["node", "server.js"], "node")
    fake_proc(tmp_path, 104, ["node", "old.js"], "node", state="Z")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_the_one_matching_process_is_found_by_command_line_or_name(proc_dir: Path) -> None:
    assert reload.find_process(r"^nginx: master", proc_dir) == 101
    assert reload.find_process(r"^node$", proc_dir) == 103  # by comm; the zombie does not count


def test_no_match_says_what_to_check(proc_dir: Path) -> None:
    with pytest.raises(ReloadError, match=r"no process matches.*shareProcessNamespace"):
        reload.find_process("postgres", proc_dir)


def test_several_matches_are_listed(proc_dir: Path) -> None:
    expected = r"2 processes match /nginx/ \(101: nginx: master.*102: nginx: worker"
    with pytest.raises(ReloadError, match=expected):
        reload.find_process("nginx", proc_dir)


def test_a_refused_signal_names_the_uid_and_cap_kill(
    proc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(pid: int, signum: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(reload.os, "kill", refuse)
    with pytest.raises(ReloadError, match=r"not permitted to send SIGHUP to process 101.*CAP_KILL"):
        reload.send_signal("^nginx: master", "SIGHUP", proc_dir)


def test_a_real_signal_reaches_a_real_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))\n"
         "print('up', flush=True)\ntime.sleep(30)  # unique-marker-4711"],
        stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # the handler is installed

        pid = reload.send_signal("unique-marker-4711", "SIGUSR1")

        assert pid == child.pid
        assert child.wait(timeout=10) == 7
    finally:
        child.kill()
        child.wait()
        if child.stdout:
            child.stdout.close()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path == "/slow":
            time.sleep(1.0)
        codes = {"/ok": 200, "/accepted": 202, "/fail": 500, "/slow": 200, "/redirect": 302}
        code = codes.get(self.path, 404)
        body = b"config invalid: line 3" if code == 500 else b"done"
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.do_POST()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_2xx_is_success(server: str) -> None:
    assert reload.http_call(server + "/ok", "POST", 2) == 200
    assert reload.http_call(server + "/accepted", "POST", 2) == 202


@pytest.mark.parametrize(
    ("path", "timeout", "message"),
    [
        ("/fail", 2.0, "answered HTTP 500: config invalid: line 3"),
        ("/redirect", 2.0, "answered HTTP 302"),
        ("/missing", 2.0, "answered HTTP 404"),
        ("/slow", 0.2, "timed out after 0.2s"),
    ],
)
def test_http_failures_say_what_happened(server: str, path: str, timeout: float, message: str) -> None:
    with pytest.raises(ReloadError, match=message):
        reload.http_call(server + path, "POST", timeout)


def test_a_refused_connection_is_a_reload_error() -> None:
    with pytest.raises(ReloadError, match="failed"):
        reload.http_call("http://127.0.0.1:1/x", "POST", 1)


def test_the_health_wait_fails_after_its_timeout(server: str) -> None:
    action = ReloadAction(type="http", url=server + "/ok", health_url=server + "/fail", health_timeout=0.3)
    with pytest.raises(ReloadError, match=r"not healthy 0.3s after reload.*HTTP 500"):
        reload.run(action)


def test_none_does_nothing() -> None:
    assert reload.run(ReloadAction(type="none")) == "no reload action"


def test_own_process_is_never_a_candidate() -> None:
    with pytest.raises(ReloadError, match="no process matches"):
        reload.find_process(rf"^{os.getpid()}-never$")


def test_the_found_process_is_reused_until_it_is_replaced(proc_dir: Path) -> None:
    first = reload.find_process_cached(r"^node$", proc_dir)
    (proc_dir / "103" / "comm").write_text("renamed\n")  # not re-read while it is the same process

    assert reload.find_process_cached(r"^node$", proc_dir) == first == 103
    shutil.rmtree(proc_dir / "103")  # the app restarted with a new pid
    fake_proc(proc_dir, 105, ["node", "server.js"], "node", start=200)

    assert reload.find_process_cached(r"^node$", proc_dir) == 105


@pytest.mark.parametrize("url", ["http://app:reload/x", "http://127.0.0.1:70000/x", "ftp://app/x", "http:///x"])
def test_an_unusable_reload_url_is_a_reload_error_not_a_crash(url: str) -> None:
    with pytest.raises(reload.ReloadError, match="not an http"):
        reload.http_call(url, "POST", 1)
