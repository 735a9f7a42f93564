"""A real RabbitMQ node (Debian's rabbitmq-server) on loopback, owned by the caller.

Each node gets its own node name, ports, data directory and Erlang cookie, so it never
collides with a system-wide RabbitMQ or with another test run. ``stop()``/``start()``
keep the data directory: durable queues and persistent messages survive, exactly as in
a real broker restart, which fault tests rely on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from refreshbus_testenv.procs import InfraError, free_port, port_open, spawn, stop_group, wait_until

RABBITMQ_BIN = Path(os.environ.get("RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))

#: Broker users created for every node: the operator's and the sidecars' (what the
#: Helm chart creates too, so tests exercise the same permissions).
USERS = {
    "refreshbus-operator": "operator-secret",
    "refreshbus-sidecar": "sidecar-secret",
}


@dataclass
class Broker:
    """One RabbitMQ node. Use :meth:`start`/:meth:`stop`; ``urls`` are ready-made AMQP URLs."""

    workdir: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    node: str = ""
    pid: int | None = None
    #: Listening address: loopback by default; a real node's pods need the node address.
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.node = self.node or f"refreshbus-{self.port}@localhost"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start the node (first start also creates the users) and wait until AMQP answers."""
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise InfraError(
                "RabbitMQ is not installed: run `make deps` (installs Debian's rabbitmq-server)"
            )
        if self.pid is not None:
            return
        first_start = not (self.workdir / "mnesia").exists()
        (self.workdir / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.workdir / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            # Sidecars declare their queues with x-expires; nothing else needs tuning.
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        proc = spawn([str(RABBITMQ_BIN / "rabbitmq-server")], self.log, env=self._env())
        self.pid = proc.pid
        wait_until(lambda: port_open(self.port, self.host), timeout, f"RabbitMQ {self.node}", proc,
                   self._server_log)
        # The port opens slightly before the node accepts logins; await the boot.
        self.ctl("await_startup", timeout=timeout)
        if first_start:
            for user, password in USERS.items():
                self.ctl("add_user", user, password)
                self.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")

    def stop(self) -> None:
        """Stop the node (keeps its data: durable queues survive a restart)."""
        if self.pid is None:
            return
        stop_group(self.pid, timeout=30)
        self.pid = None
        wait_until(lambda: not port_open(self.port, self.host), 15, f"RabbitMQ {self.node} to stop")

    def kill(self) -> None:
        """SIGKILL the node, as a crashed machine would (no clean shutdown); :meth:`start`
        brings it back on the same port with the same data."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        stop_group(self.pid, timeout=5)  # reaps it
        self.pid = None
        wait_until(lambda: not port_open(self.port, self.host), 15, f"RabbitMQ {self.node} to die")

    def restart(self) -> None:
        """Stop and start again on the same port, as a crashed-and-recovered broker would."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop and delete all data."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- access ------------------------------------------------------------------------

    def url(self, user: str = "guest", password: str | None = None) -> str:
        """An AMQP URL for one of the node's users (guest works on loopback only)."""
        password = password if password is not None else USERS.get(user, "guest")
        return f"amqp://{user}:{password}@{self.host}:{self.port}/%2F"

    @property
    def urls(self) -> list[str]:
        """URLs for the admin user (``guest``), as a list: clients take a failover list."""
        return [self.url()]

    @property
    def log(self) -> Path:
        return self.workdir / "rabbitmq-server.out"

    @property
    def running(self) -> bool:
        return self.pid is not None and port_open(self.port, self.host)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node; raises InfraError with its output on failure."""
        proc = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env={**os.environ, **self._env()},
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
        )
        if proc.returncode != 0:
            raise InfraError(f"rabbitmqctl {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def list_queues(self) -> dict[str, int]:
        """Queue name -> number of ready messages."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready")
        result: dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                result[parts[0]] = int(parts[1])
        return result

    # -- internals ---------------------------------------------------------------------

    @property
    def _server_log(self) -> Path:
        return self.workdir / "log" / f"{self.node}.log"

    def _env(self) -> dict[str, str]:
        return {
            # Own HOME: the Erlang cookie lives there, shared by server and rabbitmqctl.
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
        }
