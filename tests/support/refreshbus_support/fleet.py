"""A fleet of "pods": each a Pod API object, a real sidecar process for it and the real app
it reloads (a Node.js server or nginx). Used by the end-to-end tests and the chaos suite.

No kubelet runs: the pod object is created Running (:mod:`refreshbus_support.pods`), the
sidecar process gets the env the injector would give it (:mod:`refreshbus_support.sidecars`)
and the app reads the shared directory the sidecar writes. :meth:`Fleet.stop` stops every
process started here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles
from refreshbus_testenv.procs import free_port
from refreshbus_wire import pods as podc

from refreshbus_support import apps as apps_mod
from refreshbus_support.pods import Owner, TestPod, ack_token, create_pod
from refreshbus_support.sidecars import Sidecar, start_sidecar

#: Sidecars in tests fetch almost at once after an event (the production jitter is 0.3 s).
FAST_SIDECAR = {podc.ENV_FETCH_JITTER: "0.02"}


@dataclass
class Member:
    """One "pod": the API object, its sidecar process and the app it reloads."""

    pod: TestPod
    shared: Path
    app: apps_mod.App | None = None
    sidecar: Sidecar | None = None
    app_port: int = 0
    config_file: Path | None = None
    #: Where a journaling Node app records its loads (:func:`apps.read_journal`).
    journal: Path | None = None
    sidecar_env: dict[str, str] = field(default_factory=dict)
    #: The pod's identity token for its acks (minted once, while the API server is surely up:
    #: fault runs restart sidecars while it is not).
    ack_token: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.pod.name

    def node_state(self) -> dict[str, Any]:
        assert self.app is not None
        status, body = self.app.get("/")
        assert status == 200, body
        return dict(json.loads(body))

    def loads(self) -> list[dict[str, Any]]:
        """Every load the journaling app recorded, oldest first."""
        assert self.journal is not None, f"{self.name}: app started without a journal"
        return apps_mod.read_journal(self.journal)

    def kill_sidecar(self) -> None:
        """SIGKILL the sidecar (a crashed container: no clean-up; the shared volume stays)."""
        if self.sidecar is not None and self.sidecar.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.sidecar.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sidecar.proc.wait(10)


class Fleet:
    """Pods of one namespace. ``kubeconfig`` is what the sidecars use (default the cluster's
    own; the chaos suite points them at a fault proxy)."""

    def __init__(self, cluster: Any, broker: Any, namespace: str, tmp_path: Path,
                 *, kubeconfig: str | None = None, sidecar_env: dict[str, str] | None = None) -> None:
        self.cluster, self.broker, self.namespace, self.tmp_path = cluster, broker, namespace, tmp_path
        self.kubeconfig = kubeconfig or str(cluster.kubeconfig)
        self.sidecar_env = {**FAST_SIDECAR, **(sidecar_env or {})}
        self.members: list[Member] = []

    def node_pod(self, name: str, *, labels: dict[str, str], owner: Owner | None = None,
                 configmap: str = "app-config", process_pattern: str | None = None,
                 start: bool = True, journal: bool = False, http_reload: bool = False,
                 annotations: dict[str, str] | None = None, reload_path: str = "/-/reload") -> Member:
        """A pod whose sidecar writes ``configmap`` and SIGHUPs a Node.js app (or, with
        ``http_reload``, calls its ``POST <reload_path>`` and waits for the answer;
        ``/-/reload-slow`` answers after 5 s). With ``journal`` the app records and checks
        every load."""
        shared = self.tmp_path / f"shared-{name}"
        port = free_port()
        config_file = shared / f"configmap-{configmap}" / "config.json"
        pattern = process_pattern or rf"config-server\.js {port} {re.escape(str(config_file))}$"
        action = (
            {podc.ENV_ACTION: "http", podc.ENV_RELOAD_URL: f"http://127.0.0.1:{port}{reload_path}",
             podc.ENV_RELOAD_METHOD: "POST"} if http_reload else
            {podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP", podc.ENV_PROCESS: pattern}
        )
        pod = create_pod(self.cluster, self.namespace, name, labels=labels, annotations=annotations,
                         owner=owner, configmaps=[configmap], action=action)
        member = Member(pod=pod, shared=shared, app_port=port, config_file=config_file,
                        journal=self.tmp_path / f"app-{name}" / "loads.jsonl" if journal else None,
                        ack_token=self.ack_token(pod))
        self.members.append(member)
        if start:
            self.start(member)
        return member

    def start(self, member: Member, *, timeout: float = 15.0) -> None:
        """Start the sidecar (it writes the current config), then the app that reads it."""
        self.start_sidecar(member, timeout=timeout)
        assert member.config_file is not None
        member.app = apps_mod.start_node_app(self.tmp_path / f"app-{member.name}", member.config_file,
                                             port=member.app_port, journal=member.journal)

    def start_sidecar(self, member: Member, *, wait_ready: bool = True, timeout: float = 15.0) -> None:
        """(Re)start the member's sidecar process (same pod, same shared directory, log appended)."""
        member.sidecar = start_sidecar(member.pod, broker_urls=self.broker.urls_for("refreshbus-sidecar"),
                                       kubeconfig=self.kubeconfig, target_dir=member.shared,
                                       workdir=self.tmp_path / f"sidecar-{member.name}",
                                       env={**self.sidecar_env, **member.sidecar_env},
                                       wait_ready=wait_ready, timeout=timeout, ack_token=member.ack_token)

    def node_pods(self, names: Sequence[str], *, labels: dict[str, str], owner: Owner | None = None,
                  configmap: str = "app-config", journal: bool = False, parallel: int = 8,
                  timeout: float = 120.0) -> list[Member]:
        """Many :meth:`node_pod` at once (``parallel`` at a time: the API objects, tokens,
        sidecar and app start-ups overlap), in the order of ``names``."""
        def one(name: str) -> Member:
            member = self.node_pod(name, labels=labels, owner=owner, configmap=configmap, start=False,
                                   journal=journal)
            self.start(member, timeout=timeout)
            return member

        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(one, names))

    def nginx_pod(self, name: str, *, labels: dict[str, str], owner: Owner | None = None,
                  configmap: str = "app-config") -> Member:
        shared = self.tmp_path / f"shared-{name}"
        app = apps_mod.start_nginx(self.tmp_path / f"nginx-{name}", shared / f"configmap-{configmap}")
        pod = create_pod(self.cluster, self.namespace, name, labels=labels, owner=owner,
                         configmaps=[configmap], action={podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP",
                                 podc.ENV_PROCESS: app.process_pattern})
        member = Member(pod=pod, shared=shared, app=app, ack_token=self.ack_token(pod))
        self.members.append(member)
        self.start_sidecar(member)
        return member

    def ack_token(self, pod: TestPod) -> str:
        """The pod's identity token, as the injector's projected volume holds it (valid a day
        here: nothing rotates it)."""
        return ack_token(self.cluster, pod.namespace, pod.name, pod.uid, duration="24h")

    def stop(self) -> None:
        for member in self.members:
            if member.sidecar is not None:
                member.sidecar.stop()
            if member.app is not None:
                member.app.stop()


def apply_deployment(cluster: Any, namespace: str, name: str, *, replicas: int, configmap: str = "app-config",
                     auto_refresh: bool = True, annotations: dict[str, str] | None = None) -> dict[str, str]:
    """``kubectl apply`` an opted-in Deployment (its pods are then made with
    ``labels=<returned>, owner=Owner.replicaset_of(name)``); returns its pod labels.
    ``annotations`` go on its pod template too (e.g. ``refreshbus.io/rollout``)."""
    labels = {"app": name}
    annotations = {"refreshbus.io/inject": "true", "refreshbus.io/configmaps": configmap,
                   **(annotations or {})}
    if auto_refresh:
        annotations["refreshbus.io/auto-refresh"] = "true"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels, "annotations": annotations},
                              "spec": {"containers": [{"name": "app", "image": "registry.invalid/app"}]}}}}))
    return labels


def wait_loaded(members: Sequence[Member], loaded: Callable[[dict[str, Any]], bool],
                timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """Wait until every member's journaling app has recorded a load for which ``loaded(entry)``
    is true; returns the first such journal entry per member name.

    Woken by inotify on the journals (no polling interval in the measured path: the entries
    carry the app's own timestamp, ``at``); the timeout of each wait only re-checks."""
    journals = {m.name: m.journal for m in members}
    assert all(j is not None for j in journals.values()), "every member needs a journaling app"
    dirs = sorted({str(j.parent) for j in journals.values() if j is not None})
    for d in dirs:
        Path(d).mkdir(parents=True, exist_ok=True)
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    changes = watchfiles.watch(*dirs, watch_filter=None, debounce=20, step=5, rust_timeout=500,
                               yield_on_timeout=True, raise_interrupt=False, recursive=False)
    try:
        while True:
            for m in members:
                if m.name not in found:
                    entry = next((e for e in m.loads() if loaded(e)), None)
                    if entry is not None:
                        found[m.name] = entry
            if len(found) == len(members):
                return found
            if time.monotonic() > deadline:
                missing = sorted(set(journals) - set(found))
                raise AssertionError(f"{len(missing)} app(s) never loaded it within {timeout}s: "
                                     f"{', '.join(missing[:10])}")
            next(changes)
    finally:
        changes.close()
