"""Real Spring Boot bus members for the Spring tests (issue 12), as processes.

The app (tests/support/spring-app: Boot 3.5.7, Spring Cloud 2025.0.0, spring-cloud-starter-bus-amqp,
actuator, one @RefreshScope bean; a Config Server with spring-cloud-config-monitor when asked) is
built by hack/build-spring-app.sh, pinned and cached. No skip path: without a JDK or Maven the
build fails and so does every test that needs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from refreshbus_testenv.procs import free_port

ROOT = Path(__file__).resolve().parents[3]
#: A small, quick-starting JVM: these instances only answer a few HTTP calls and bus events.
JVM_OPTIONS = ("-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto")


@cache
def app_jar() -> Path:
    """The Spring app's jar (built once per source change; the build is flock'ed)."""
    out = subprocess.run(["bash", str(ROOT / "hack" / "build-spring-app.sh")], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(
            f"building the Spring test app failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class SpringApp:
    """One Spring Boot instance on the test broker, its HTTP port on loopback."""

    name: str
    workdir: Path
    broker_port: int
    properties: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"spring-{self.name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SpringApp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = {
            "server.port": str(self.port),
            "server.address": "127.0.0.1",
            "spring.application.name": self.name,
            "spring.rabbitmq.host": "127.0.0.1",
            "spring.rabbitmq.port": str(self.broker_port),
            **self.properties,
        }
        cmd = ["java", *JVM_OPTIONS, "-jar", str(app_jar()), *(f"--{k}={v}" for k, v in args.items())]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, "JAVA_TOOL_OPTIONS": ""})
        return self

    def wait_ready(self, timeout: float = 120.0) -> SpringApp:
        """Until actuator health is UP (the bus binding is up by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"Spring app {self.name} exited with {self.proc.returncode}\n{self.tail()}")
            try:
                if self.get("/actuator/health").get("status") == "UP":
                    return self
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"Spring app {self.name} not healthy within {timeout}s\n{self.tail()}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
        # urllib would send an empty body as a form, which actuator refuses (415).
        headers = {"Content-Type": "application/json", **(headers or {})}
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)

    def busrefresh(self, destination: str | None = None) -> None:
        """``POST /actuator/busrefresh[/<destination>]``, as a person would."""
        self.post("/actuator/busrefresh" + (f"/{destination}" if destination else ""))

    def state(self) -> dict[str, Any]:
        """``busId``, ``refreshes`` (of its @RefreshScope bean) and the ``acks`` it saw on the bus."""
        return dict(self.get("/state"))

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
