"""A real RabbitMQ node (Debian's rabbitmq-server) on loopback, owned by the caller, and a
cluster of such nodes on this one host (:class:`BrokerCluster`).

Each node gets its own node name, ports, data directory and Erlang cookie, so it never
collides with a system-wide RabbitMQ or with another test run. ``stop()``/``start()``
keep the data directory: durable queues and persistent messages survive, exactly as in
a real broker restart, which fault tests rely on. The nodes of a cluster share one
cookie and join the first node (``rabbitmqctl join_cluster``), as the nodes of a real
multi-machine cluster do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    #: Erlang cookie (None: the node makes its own). Nodes of one cluster share it.
    cookie: str | None = field(default=None, repr=False)
    #: Node to join on first start (peer discovery), for a node of a :class:`BrokerCluster`.
    join: str | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.node = self.node or f"refreshbus-{self.port}@localhost"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start the node (with its users, or joining ``join``) and wait until AMQP answers."""
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise InfraError(
                "RabbitMQ is not installed: run `make deps` (installs Debian's rabbitmq-server)"
            )
        if self.pid is not None:
            return
        (self.workdir / "mnesia").mkdir(parents=True, exist_ok=True)
        # Users come from a definitions file loaded at boot: a rabbitmqctl call costs seconds
        # on a loaded machine, four of them more than the boot itself.
        (self.workdir / "definitions.json").write_text(json.dumps(_definitions()))
        joining = (
            # A fresh node joins this one while it boots (peer discovery from a fixed list,
            # RabbitMQ's classic config); once clustered it rejoins its cluster by itself.
            "cluster_formation.peer_discovery_backend = classic_config\n"
            f"cluster_formation.classic_config.nodes.1 = {self.join}\n"
            if self.join else ""
        )
        (self.workdir / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            # Sidecars declare their queues with x-expires; nothing else needs tuning.
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 50MB\n"
            f"load_definitions = {self.workdir / 'definitions.json'}\n"
            + joining
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        cookie_file = self.workdir / ".erlang.cookie"
        if self.cookie is not None and not cookie_file.exists():
            cookie_file.write_text(self.cookie)
            cookie_file.chmod(0o400)  # Erlang refuses a cookie others can read
        proc = spawn([str(RABBITMQ_BIN / "rabbitmq-server")], self.log, env=self._env())
        self.pid = proc.pid
        wait_until(lambda: port_open(self.port, self.host), timeout, f"RabbitMQ {self.node}", proc,
                   self._server_log)
        # The port opens slightly before the node accepts logins; await the boot.
        self.ctl("await_startup", timeout=timeout)

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

    def urls_for(self, user: str) -> list[str]:
        """The failover list a client of ``user`` is given (one URL: one node)."""
        return [self.url(user)]

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


def _definitions() -> dict[str, object]:
    """Broker definitions (RabbitMQ's import format) with the vhost and every user. Imported
    at boot, they replace the default guest user and vhost, so both are listed too."""
    users = {"guest": "guest", **USERS}
    return {
        "vhosts": [{"name": "/"}],
        "users": [
            {"name": name, "password": password, "tags": "administrator" if name == "guest" else ""}
            for name, password in users.items()
        ],
        "permissions": [
            {"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} for name in users
        ],
    }


#: A classic queue's or connection's Erlang pid names its node: ``<refreshbus-1234@localhost.1.2.3>``.
_PID_NODE = re.compile(r"<([^.>]+@[^.>]+)\.")


@dataclass
class BrokerCluster:
    """``size`` RabbitMQ nodes on this host joined into one cluster. Clients get every
    node's URL (``urls_for``), so they fail over as they would between machines. Nodes can
    be killed (:meth:`Broker.kill`) and started again one by one; :meth:`destroy` stops
    every node and deletes their data, whatever state they are in."""

    workdir: Path
    size: int = 3
    nodes: list[Broker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if not self.nodes:
            cookie = secrets.token_hex(20)
            first = Broker(self.workdir / "node-0", cookie=cookie)
            self.nodes = [first] + [
                Broker(self.workdir / f"node-{i}", cookie=cookie, join=first.node)
                for i in range(1, self.size)
            ]

    def start(self) -> None:
        """Start every node that is not running: the first one, then the others together
        (each joins the first one while it boots)."""
        pending = [n for n in self.nodes if not n.running]
        if not pending:
            return
        first, *others = pending
        first.pid = None
        first.start()
        with ThreadPoolExecutor(len(others) or 1) as pool:
            for node in others:
                node.pid = None
            list(pool.map(Broker.start, others))

    def destroy(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(InfraError):
                node.destroy()

    def __iter__(self) -> Iterator[Broker]:
        return iter(self.nodes)

    def urls_for(self, user: str) -> list[str]:
        return [node.url(user) for node in self.nodes]

    def url(self, user: str = "guest", password: str | None = None) -> str:
        """One node's URL (the first running one), for clients that take a single URL."""
        return self.live().url(user, password)

    def live(self) -> Broker:
        """A running node, to ask about the cluster."""
        for node in self.nodes:
            if node.running:
                return node
        raise InfraError("no node of the RabbitMQ cluster is running")

    def node(self, name: str) -> Broker:
        return next(n for n in self.nodes if n.node == name)

    def running_nodes(self) -> set[str]:
        """Node names the cluster itself counts as running."""
        out = self.live().ctl("eval", "io:format(\"~p\", [rabbit_nodes:all_running()]).")
        return set(re.findall(r"'([^']+)'", out))

    def queue_nodes(self, prefix: str) -> dict[str, str]:
        """Queue name -> the node its process lives on, for the classic queues whose name
        starts with ``prefix`` (a sidecar's exclusive queue lives on the node it connected to)."""
        out = self.live().ctl("list_queues", "-q", "--no-table-headers", "name", "pid")
        result: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith(prefix) and (m := _PID_NODE.match(parts[1])):
                result[parts[0]] = m.group(1)
        return result

    def quorum_members(self, queue: str) -> tuple[str, list[str]]:
        """A quorum queue's leader node and its member nodes."""
        out = self.live().ctl("list_queues", "-q", "--no-table-headers", "name", "leader", "members")
        for line in out.splitlines():
            if line.split("\t", 1)[0] == queue:
                _name, leader, members = line.split("\t")
                return leader, re.findall(r"[\w.-]+@[\w.-]+", members)
        raise InfraError(f"no quorum queue {queue}: {out}")
