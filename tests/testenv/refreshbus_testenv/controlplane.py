"""A real Kubernetes control plane (etcd + kube-apiserver) as local processes, envtest style.

The API server runs with the real admission chain (mutating/validating webhooks
included), RBAC authorization and a service-account token issuer, so RBAC and webhook
tests against it mean what they say. There is no kubelet, scheduler or controller
manager here: tests that need pods create them as API objects and set their status
through the status subresource, as a kubelet would.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refreshbus_testenv import certs
from refreshbus_testenv.binaries import ensure_binaries
from refreshbus_testenv.procs import InfraError, free_port, spawn, stop_group, wait_until

ROOT = Path(__file__).resolve().parents[3]
CRDS = ROOT / "crds"


@dataclass
class ControlPlane:
    """etcd + kube-apiserver on loopback. ``kubeconfig`` is an admin (system:masters) config."""

    workdir: Path
    api_port: int = field(default_factory=free_port)
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    pids: dict[str, int] = field(default_factory=dict)
    bin_dir: Path | None = None
    #: Where the API server listens and what it advertises (the ``kubernetes`` Service's
    #: endpoint). Loopback by default; a real node (node.py) needs an address pods reach.
    address: str = "127.0.0.1"
    #: Extra kube-apiserver flags (e.g. the kubelet client certificate for a real node).
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def kubeconfig(self) -> str:
        return str(self.workdir / "kubeconfig")

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Build (first time only) and start etcd and kube-apiserver; wait for /readyz."""
        self.bin_dir = ensure_binaries(["kube-apiserver", "etcd", "kubectl"])
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs.make_control_plane_pki(self.pki, extra_sans=[f"IP:{self.address}"])
        self._write_kubeconfig()

        etcd = spawn(
            [
                str(self.bin_dir / "etcd"),
                "--name=refreshbus-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
                f"--initial-cluster=refreshbus-test=http://127.0.0.1:{self.etcd_peer_port}",
                "--unsafe-no-fsync",  # test data: durability buys nothing, fsync costs seconds
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        )
        self.pids["etcd"] = etcd.pid
        wait_until(lambda: self._http_ok(f"http://127.0.0.1:{self.etcd_port}/health"), timeout,
                   "etcd", etcd, self.workdir / "etcd.log")
        self._start_apiserver(timeout)
        self._wait_for_default_namespace(timeout)

    def restart_apiserver(self, timeout: float = 120.0) -> None:
        """Stop kube-apiserver (SIGTERM) and start it again on the same port, etcd kept:
        clients see their connections and watches cut and requests refused until it is back."""
        pid = self.pids.pop("kube-apiserver", None)
        if pid is not None:
            stop_group(pid)
        self._start_apiserver(timeout)

    def _start_apiserver(self, timeout: float) -> None:
        assert self.bin_dir is not None, "control plane not started"
        p = self.pki
        api = spawn(
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                # A documentation range: Service IPs are allocated from it, never routed.
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--cert-dir={self.workdir / 'certs'}",
                "--v=1",
                *self.extra_args,
            ],
            self.workdir / "kube-apiserver.log",
        )
        self.pids["kube-apiserver"] = api.pid
        wait_until(self._readyz, timeout, "kube-apiserver", api, self.workdir / "kube-apiserver.log", 0.25)

    def stop(self) -> None:
        """Stop the API server, then etcd."""
        for name in ("kube-apiserver", "etcd"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                stop_group(pid)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- kubectl -----------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (text mode, output captured).

        With ``check`` a non-zero exit raises AssertionError carrying kubectl's stderr,
        which is what a failing test should show.
        """
        assert self.bin_dir is not None, "control plane not started"
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "KUBECTL_KUBERC": "false"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def kubeconfig_for_token(self, token: str, name: str) -> str:
        """Write a kubeconfig that authenticates with a bearer token only (e.g. a
        ServiceAccount's), to see the cluster exactly as that identity does."""
        path = self.workdir / f"kubeconfig-{name}"
        config = json.loads(Path(self.kubeconfig).read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        path.write_text(json.dumps(config, indent=2))
        return str(path)

    def get_json(self, *args: str) -> Any:
        """``kubectl get ... -o json`` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_crds(self, timeout: float = 30.0) -> None:
        """Apply everything in crds/ and wait until each CRD is Established."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        names = [
            item["metadata"]["name"]
            for item in self.get_json("-f", str(CRDS)).get("items", [])
        ]
        for name in names:
            self.kubectl("wait", "--for=condition=Established", f"crd/{name}", f"--timeout={int(timeout)}s")

    # -- internals ---------------------------------------------------------------------

    def _write_kubeconfig(self) -> None:
        p = self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "refreshbus-local", "cluster": {
                "server": self.server, "certificate-authority": str(p / "ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(p / "admin.crt"), "client-key": str(p / "admin.key")}}],
            "contexts": [{"name": "refreshbus-local", "context": {
                "cluster": "refreshbus-local", "user": "admin", "namespace": "default"}}],
            "current-context": "refreshbus-local",
        }
        Path(self.kubeconfig).write_text(json.dumps(config, indent=2))

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _readyz(self) -> bool:
        return self._http_ok(f"{self.server}/readyz", self._ssl_context())

    @staticmethod
    def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _wait_for_default_namespace(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kubectl("get", "namespace", "default", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise InfraError("kube-apiserver never created the default namespace")


class ExistingCluster(ControlPlane):
    """A cluster someone else runs (kind, for users with Docker), named by $KUBECONFIG.

    Same interface as :class:`ControlPlane`, so the suites that take the ``cluster``
    fixture run unchanged; only bring-up and tear-down differ (there are none).
    """

    def __init__(self, kubeconfig: str) -> None:
        super().__init__(Path(kubeconfig).parent)
        self._kubeconfig = kubeconfig

    @property
    def kubeconfig(self) -> str:
        return self._kubeconfig

    @property
    def server(self) -> str:
        out = self.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
        return out.stdout.strip()

    def start(self, timeout: float = 120.0) -> None:
        self.bin_dir = ensure_binaries(["kubectl"])
        if self.kubectl("version", check=False).returncode != 0:
            raise InfraError(f"the cluster in {self.kubeconfig} does not answer")

    def stop(self) -> None:
        """Leave the user's cluster alone."""

    def destroy(self) -> None:
        """Leave the user's cluster alone."""
