"""Test harness for the operator: the real ``refreshbus-operator`` as a subprocess, fake
sidecars that speak the real protocol on the real broker, and polling helpers.

Used by tests/integration/operator (fake sidecars) and tests/e2e (real sidecars). The
conftest of each puts this directory on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from refreshbus_testenv.procs import free_port, tail
from refreshbus_wire import Ack, AckResult, RefreshEvent, Timings, decode, encode, new_id, now, routing

OPERATOR_BIN = Path(sys.executable).parent / "refreshbus-operator"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; returns its value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# -- the operator process ------------------------------------------------------------------


@dataclass
class OperatorProc:
    kubeconfig: str
    broker_urls: Sequence[str]
    namespaces: Sequence[str]
    workdir: Path
    args: Sequence[str] = ("--standalone",)
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = "operator"
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=free_port)
    #: Python run in the operator process before its CLI (fault injection in tests).
    inject: str | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, wait: bool = True) -> OperatorProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "REFRESHBUS_BROKER_URLS": ",".join(self.broker_urls),
            "REFRESHBUS_OPERATOR_RESUME_GRACE": "1",
            "REFRESHBUS_OPERATOR_UNKNOWN_ACK_GRACE": "3",
            "REFRESHBUS_OPERATOR_PUBLISH_RETRY_MAX": "1",
            **self.env,
        }
        program = [str(OPERATOR_BIN)]
        if self.inject is not None:
            main = "import sys\nfrom refreshbus_operator.__main__ import main\nsys.exit(main(sys.argv[1:]))"
            program = [sys.executable, "-c", f"{self.inject}\n{main}"]
        cmd = [
            *program,
            *self.args,
            "--metrics-port",
            str(self.metrics_port),
            "--log-format",
            "plain",
        ]
        for ns in self.namespaces:
            cmd += ["--namespace", ns]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_started()
        return self

    def wait_started(self, timeout: float = 30.0) -> None:
        def started() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}\n{self.logs_tail()}")
            return "refreshbus operator started" in self.text()

        try:
            wait_for(started, timeout, f"{self.name} to start")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs_tail()}") from None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs_tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crashed/evicted pod."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.kill()
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        """Parsed Prometheus text: ``name{labels}`` -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out


# -- fake sidecars ---------------------------------------------------------------------------

Behaviour = Callable[[RefreshEvent, int], tuple[str, str | None] | None]


def always(result: str, error: str | None = None) -> Behaviour:
    """Answer every delivery with ``result`` (ok/unchanged/failed)."""
    return lambda _event, _n: (result, error)


def silent() -> Behaviour:
    return lambda _event, _n: None


class FakeSidecar:
    """Speaks the real protocol on the real broker for one pod: declares an exclusive
    sidecar queue and its four bindings, records every refresh event delivered, and acks
    (with the pod's identity token) as told by
    ``behaviour(event, nth delivery of this event id)``. Reconnects when the broker restarts."""

    def __init__(
        self,
        url: str,
        namespace: str,
        pod: str,
        workload: tuple[str, str],
        behaviour: Behaviour | None = None,
        token: str | None = None,
    ) -> None:
        self.url = url
        #: The pod's ack-identity token, sent with every ack as a real sidecar does.
        self.token = token
        self.identity = routing.PodIdentity(namespace, pod, workload[0], workload[1])
        self.behaviour = behaviour or always("ok")
        #: The release revision its acks say it runs (protocol 1.3); by default the one the
        #: event names, as a current sidecar that followed the record reports it.
        self.runs_revision: Callable[[RefreshEvent], int | None] = lambda e: e.release and e.release.revision
        self.events: list[RefreshEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fake-{pod}", daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise AssertionError(f"fake sidecar {pod} could not connect to {url}")

    @property
    def pod(self) -> str:
        return self.identity.pod

    def deliveries(self, event_id: str | None = None) -> list[RefreshEvent]:
        with self._lock:
            return [e for e in self.events if event_id is None or e.id == event_id]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = pika.BlockingConnection(pika.URLParameters(self.url))
                ch = conn.channel()
                ch.exchange_declare(routing.EXCHANGE, exchange_type=routing.EXCHANGE_TYPE, durable=True)
                queue = routing.new_sidecar_queue(self.identity)
                ch.queue_declare(queue, exclusive=True)
                for key in routing.sidecar_bindings(self.identity):
                    ch.queue_bind(queue, routing.EXCHANGE, routing_key=key)
                ch.basic_consume(queue, lambda c, m, p, b: self._on_event(c, b), auto_ack=True)
                self._ready.set()
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.05)
                conn.close()
            except Exception:
                time.sleep(0.2)

    def _on_event(self, channel: Any, body: bytes) -> None:
        event = decode(body)
        assert isinstance(event, RefreshEvent)
        with self._lock:
            self.events.append(event)
            nth = sum(1 for e in self.events if e.id == event.id)
        answer = self.behaviour(event, nth)
        if answer is None:
            return
        result, error = answer
        ack = Ack(
            id=new_id(),
            event_id=event.id,
            namespace=self.identity.namespace,
            pod=self.identity.pod,
            result=AckResult(result),
            received_at=now(),
            config_hash="sha256:fake",
            timings=Timings(written_ms=1.0, reloaded_ms=2.0),
            error=error,
            identity_token=self.token,
            revision=self.runs_revision(event),
        )
        channel.basic_publish(
            routing.EXCHANGE,
            routing.ack_key(self.identity.namespace, self.identity.pod),
            encode(ack),
            pika.BasicProperties(content_type="application/json"),
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def publish_raw(url: str, key: str, body: bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.exchange_declare(routing.EXCHANGE, exchange_type=routing.EXCHANGE_TYPE, durable=True)
        ch.basic_publish(routing.EXCHANGE, key, body)
    finally:
        conn.close()


# -- Kubernetes objects ------------------------------------------------------------------------

#: Labels of the ``orders`` Deployment's pods in the operator tests.
ORDERS = {"app": "orders"}


def orders_pods(
    cluster: Any,
    namespace: str,
    n: int,
    fake_sidecars: Callable[..., FakeSidecar],
    behaviours: Mapping[int, Behaviour | None] | None = None,
    configmaps: tuple[str, ...] = ("app-config",),
) -> list[FakeSidecar]:
    """``n`` running, opted-in pods of Deployment ``orders`` (``orders-5d8f9c7b6-p<i>``,
    managing ``configmaps``), each with a fake sidecar answering as ``behaviours[i]`` says
    (default: ``ok``). The Deployment object and the ConfigMaps are the caller's."""
    from refreshbus_support.pods import Owner, create_pod

    fakes = []
    for i in range(n):
        pod = create_pod(
            cluster,
            namespace,
            f"orders-5d8f9c7b6-p{i}",
            labels=ORDERS,
            owner=Owner.replicaset_of("orders"),
            configmaps=configmaps,
        )
        behaviour = (behaviours or {}).get(i)
        fakes.append(fake_sidecars(namespace, pod.name, (pod.workload_kind, pod.workload_name), behaviour))
    return fakes



def deployment(
    cluster: Any,
    namespace: str,
    name: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> None:
    """A Deployment object (no controller runs: it never creates pods by itself)."""
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": dict(annotations or {})},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:test"}]},
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def configmap(cluster: Any, namespace: str, name: str, data: Mapping[str, str]) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": dict(data),
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def refresh(cluster: Any, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    manifest = {
        "apiVersion": "refreshbus.io/v1alpha1",
        "kind": "ConfigRefresh",
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(spec),
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def cfr(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("-n", namespace, "get", "configrefresh", name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def wait_phase(
    cluster: Any,
    namespace: str,
    name: str,
    phases: Sequence[str] | str,
    timeout: float = 30.0,
    operator: OperatorProc | None = None,
) -> dict[str, Any]:
    wanted = {phases} if isinstance(phases, str) else set(phases)
    try:
        return wait_for(
            lambda: (o := cfr(cluster, namespace, name)).get("status", {}).get("phase") in wanted and o,
            timeout,
            f"ConfigRefresh {name} phase in {sorted(wanted)}",
            interval=0.1,
        )
    except AssertionError as exc:
        extra = f"\nstatus: {json.dumps(cfr(cluster, namespace, name).get('status'), indent=1)}"
        if operator is not None:
            extra += f"\noperator log:\n{operator.logs_tail()}"
        raise AssertionError(f"{exc}{extra}") from None


def events_for(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.get_json("-n", namespace, "events", "--field-selector", f"involvedObject.name={name}")
    return list(items.get("items") or [])


def condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions") or ():
        if cond.get("type") == ctype:
            return dict(cond)
    return {}
