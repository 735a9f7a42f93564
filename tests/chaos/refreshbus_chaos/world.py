"""Every process of a chaos run, and the faults injected into them.

Brought up by :meth:`World.up`, torn down (pass or fail) by :meth:`World.down`:

* RabbitMQ (:class:`refreshbus_testenv.broker.Broker`), etcd + kube-apiserver
  (:class:`refreshbus_testenv.controlplane.ControlPlane`) with the CRDs;
* a :class:`~refreshbus_support.faultproxy.FaultProxy` in front of the API server: the
  sidecars and the operators reach the API only through it (the suite's own kubectl goes
  direct, so the suite keeps its view while the proxy plays dead);
* three workloads in namespace ``chaos``, each a Deployment object, a ConfigMap and pods
  with real sidecars reloading journaling Node apps over HTTP (:mod:`refreshbus_support.fleet`):
  ``web`` (auto-refresh), ``api`` (explicit ConfigRefreshes) and ``canary`` (the canary
  refresh after each fault);
* two operator replicas with kopf peering (priorities 200 and 100).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from refreshbus_support import configs
from refreshbus_support.faultproxy import FaultProxy
from refreshbus_support.fleet import Fleet, Member
from refreshbus_support.pods import Owner
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.procs import free_port
from refreshbus_wire import pods as podc

from refreshbus_chaos.plan import FaultPlan, content

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "operator"))

from opharness import OperatorProc, deployment

NAMESPACE = "chaos"
PEERING = "refreshbus"
#: Replica slot -> kopf peering priority (the higher one is active while it lives).
PRIORITIES = {"a": 200, "b": 100}

OPERATOR_ENV = {
    # A dead active replica is replaced within ~4 s instead of kopf's 60.
    "REFRESHBUS_OPERATOR_PEERING_LIFETIME": "4",
    "REFRESHBUS_OPERATOR_AUTO_REFRESH_DEBOUNCE": "0.5",
    # Keep every auto-created ConfigRefresh until the end: the suite checks each one.
    "REFRESHBUS_OPERATOR_HISTORY_LIMIT": "100000",
    "REFRESHBUS_OPERATOR_TTL_SECONDS_AFTER_FINISHED": "86400",
}

T = TypeVar("T")


@dataclass
class Group:
    """One workload: its ConfigMap, its pods and the newest version written."""

    name: str
    auto: bool
    members: list[Member] = field(default_factory=list)
    version: int = 1

    @property
    def configmap(self) -> str:
        return f"{self.name}-config"

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.name}


def retrying(fn: Callable[[], T], what: str, timeout: float = 180.0) -> T:
    """``fn()`` again until it stops failing: the suite's own API calls must outlive an API
    server restart (it is the system under test that must cope, not the test driver)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (AssertionError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout:.0f}s: {exc}") from exc
            time.sleep(0.5)


class World:
    def __init__(self, workdir: Path, seed: int, sidecars: int, log: Callable[[str], None]) -> None:
        if sidecars < 4:
            raise ValueError("sidecars must be >= 4 (2 canaries + at least one per other workload)")
        self.workdir, self.seed, self.log = workdir, seed, log
        self.broker = Broker(workdir / "rabbitmq")
        self.cluster = ControlPlane(workdir / "k8s")
        self.proxy: FaultProxy | None = None
        self.fleet: Fleet | None = None
        n_web = (sidecars - 2) // 2
        self.groups = {
            "web": Group("web", auto=True),
            "api": Group("api", auto=False),
            "canary": Group("canary", auto=False),
        }
        self._sizes = {"web": n_web, "api": sidecars - 2 - n_web, "canary": 2}
        self.operators: dict[str, OperatorProc] = {}
        self._liveness: dict[str, int] = {}
        self._incarnations = 0

    # -- bring-up and tear-down --------------------------------------------------------

    def up(self) -> None:
        self.log("starting RabbitMQ and the control plane")
        with ThreadPoolExecutor(2) as pool:  # independent, and each takes tens of seconds
            started = [pool.submit(self.broker.start), pool.submit(self.cluster.start)]
            for future in started:
                future.result()
        self.cluster.apply_crds()
        self.proxy = FaultProxy(self.cluster.api_port).start()
        kubeconfig = self.proxy.kubeconfig_via(self.cluster.kubeconfig, self.workdir / "kubeconfig-via-proxy")
        self.kubectl("create", "namespace", NAMESPACE)
        self.kubectl("-n", NAMESPACE, "create", "serviceaccount", "default")
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
            "metadata": {"name": PEERING, "namespace": NAMESPACE}}))
        self.fleet = Fleet(self.cluster, self.broker, NAMESPACE, self.workdir / "pods",
                           kubeconfig=str(kubeconfig))
        for group in self.groups.values():
            annotations = {podc.ANN_INJECT: "true", podc.ANN_CONFIGMAPS: group.configmap}
            if group.auto:
                annotations[podc.ANN_AUTO_REFRESH] = "true"
            deployment(self.cluster, NAMESPACE, group.name, group.labels, annotations)
            self.put_version(group)
            self.log(f"starting {self._sizes[group.name]} pods of {group.name}")
            for i in range(self._sizes[group.name]):
                group.members.append(self.fleet.node_pod(
                    f"{group.name}-5d8f9c7b6-{i}", labels=group.labels, owner=Owner.replicaset_of(group.name),
                    configmap=group.configmap, journal=True, http_reload=True))
        self.log("starting two operator replicas with peering")
        for slot in PRIORITIES:
            self.start_operator(slot)

    def down(self) -> None:
        """Stop everything, each step even if an earlier one failed."""
        steps: list[Callable[[], object]] = [op.stop for op in self.operators.values()]
        steps += [s.stop for s in (self.fleet, self.proxy) if s is not None]
        steps += [self.cluster.stop, self.broker.stop]
        for step in steps:
            try:
                step()
            except Exception as exc:
                self.log(f"tear-down: {step.__qualname__} failed: {exc}")

    # -- the suite's own API access ----------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return retrying(lambda: self.cluster.kubectl(*args, input=input), f"kubectl {' '.join(args)}")

    def put_version(self, group: Group) -> None:
        """Write the group's current version into its ConfigMap."""
        data = content(self.seed, group.configmap, group.version)
        retrying(lambda: configs.put_configmap(self.cluster, NAMESPACE, group.configmap, data),
                 f"writing ConfigMap {group.configmap}")

    def apply_refresh(self, name: str, spec: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "refreshbus.io/v1alpha1", "kind": "ConfigRefresh",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}))

    def refresh(self, name: str) -> dict[str, Any]:
        out = retrying(lambda: self.cluster.kubectl("-n", NAMESPACE, "get", "configrefresh", name,
                                                    "-o", "json", "--ignore-not-found"), f"get cfr {name}")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def refreshes(self) -> list[dict[str, Any]]:
        out = self.kubectl("-n", NAMESPACE, "get", "configrefresh", "-o", "json")
        return list(json.loads(out.stdout)["items"])

    # -- operators ---------------------------------------------------------------------

    def start_operator(self, slot: str) -> OperatorProc:
        assert self.proxy is not None
        self._incarnations += 1
        self._liveness[slot] = free_port()
        op = OperatorProc(
            kubeconfig=str(self.workdir / "kubeconfig-via-proxy"),
            broker_urls=[self.broker.url("refreshbus-operator")], namespaces=(NAMESPACE,),
            workdir=self.workdir / "operators",
            args=("--peering", PEERING, "--priority", str(PRIORITIES[slot]),
                  "--liveness", f"http://127.0.0.1:{self._liveness[slot]}/healthz"),
            env=OPERATOR_ENV, name=f"operator-{slot}-{self._incarnations}")
        self.operators[slot] = op
        return op.start()

    def liveness(self) -> dict[str, str]:
        """Each replica's liveness answer (what a kubelet would act on), for diagnostics."""
        out = {}
        for slot, port in self._liveness.items():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
                    out[slot] = str(resp.status)
            except urllib.error.HTTPError as exc:
                out[slot] = str(exc.code)
            except OSError as exc:
                out[slot] = f"no answer ({exc})"
        return out

    def operator_slot(self, active: bool) -> str | None:
        """The live replica that holds the peering (the highest priority), or the other one."""
        alive = sorted((s for s, op in self.operators.items() if op.alive), key=lambda s: -PRIORITIES[s])
        if active:
            return alive[0] if alive else None
        return alive[1] if len(alive) > 1 else None

    # -- faults --------------------------------------------------------------------------

    @property
    def members(self) -> list[Member]:
        return [m for g in self.groups.values() for m in g.members]

    def inject(self, fault: FaultPlan) -> str:
        """Inject ``fault``, hold it, recover from it; returns what was hit."""
        assert self.proxy is not None
        assert self.fleet is not None
        kind, hold = fault.kind, fault.hold
        if kind == "broker_kill":
            self.broker.kill()
            time.sleep(hold)
            self.broker.start()
            return "RabbitMQ"
        if kind == "broker_restart":
            self.broker.stop()
            time.sleep(hold)
            self.broker.start()
            return "RabbitMQ"
        if kind == "broker_close_connections":
            conns = sorted(line.split("\t") for line in self.broker.ctl(
                "list_connections", "-q", "--no-table-headers", "user", "pid").splitlines() if "\t" in line)
            if not conns:
                return "no connection open"
            chosen = sorted({tuple(conns[p % len(conns)]) for p in fault.picks})
            for _user, pid in chosen:
                with contextlib.suppress(Exception):  # it may have closed by itself meanwhile
                    self.broker.ctl("close_connection", pid, "chaos: closed by the broker")
            return ", ".join(user for user, _pid in chosen)
        if kind == "apiserver_restart":
            self.cluster.restart_apiserver()
            return "kube-apiserver"
        if kind in ("operator_kill_active", "operator_kill_standby"):
            slot = self.operator_slot(active=kind == "operator_kill_active")
            if slot is None:
                return "no such replica alive"
            self.operators[slot].kill()
            time.sleep(hold)
            self.start_operator(slot)
            return f"replica {slot}"
        if kind == "sidecar_kill":
            members = self.members
            victims = [members[p % len(members)] for p in fault.picks]
            for member in victims:
                member.kill_sidecar()
            time.sleep(hold)
            for member in victims:
                self.fleet.start_sidecar(member, timeout=120)
            return ", ".join(m.name for m in victims)
        if kind == "api_slow":
            self.proxy.set_mode("delay", fault.delay)
            time.sleep(hold)
            self.proxy.set_mode("pass")
            return f"API delayed {fault.delay:.1f}s per request"
        if kind == "api_drop":
            self.proxy.set_mode("blackhole")
            time.sleep(hold)
            self.proxy.set_mode("pass")
            self.proxy.cut()
            return "API requests swallowed, then connections cut"
        raise ValueError(f"unknown fault kind {kind!r}")

    def dead_processes(self) -> list[str]:
        """Processes of the system under test that exited on their own."""
        dead = [f"operator replica {s} ({op.name}) exited with {op.proc.returncode if op.proc else None}"
                for s, op in self.operators.items() if not op.alive]
        for m in self.members:
            if m.sidecar is None:
                dead.append(f"sidecar of {m.name} never started")
            elif m.sidecar.proc.poll() is not None:
                dead.append(f"sidecar of {m.name} exited with {m.sidecar.proc.returncode} "
                            f"(log {m.sidecar.log})")
            if m.app is None or not m.app.running:
                dead.append(f"app of {m.name} exited")
        return dead
