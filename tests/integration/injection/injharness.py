"""The injection webhook as a real HTTPS process, registered with the real API server
(used by the injection and rbac suites).

The MutatingWebhookConfiguration is the one the package renders, in ``url`` mode
(https://127.0.0.1:<port>/mutate-pods: a local API server cannot reach a Service), with
one extra namespaceSelector term so only namespaces these tests label are sent to it.
It is created without a caBundle: the webhook process patches it in, as in production.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.webhook import webhook_configuration
from refreshbus_testenv.procs import free_port, spawn, stop_group, tail

ROOT = Path(__file__).resolve().parents[3]
PYTHON = ROOT / ".venv" / "bin" / "python"
TEST_LABEL = "refreshbus-test/injection"
SIDECAR_IMAGE = "example.test/refreshbus-sidecar:test"


@dataclass
class Injector:
    cluster: Any
    workdir: Path
    operator_namespace: str
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    port: int = field(default_factory=free_port)
    pid: int | None = None
    #: "standalone": python -m refreshbus_operator.injection; "kopf": the operator's handlers.
    mode: str = "standalone"
    #: Identity of the webhook process (default: the admin kubeconfig).
    kubeconfig: str | None = None
    #: Namespace the kopf handlers watch (kopf mode).
    watch_namespace: str | None = None
    #: Extra environment of the webhook process.
    env: dict[str, str] = field(default_factory=dict)
    #: The CA to trust when the process does not manage its TLS Secret (cert-manager mode).
    ca_override: bytes | None = None

    @property
    def mwc_name(self) -> str:
        return f"refreshbus-injector-{self.session}"

    @property
    def config(self) -> InjectionConfig:
        return InjectionConfig(
            operator_namespace=self.operator_namespace,
            webhook_configuration=self.mwc_name,
            sidecar_image=SIDECAR_IMAGE,
            tls_secret=f"webhook-tls-{self.session}",
        )

    @property
    def log(self) -> Path:
        return self.workdir / "webhook.log"

    def register(self, failure_policy: str = "Ignore") -> None:
        """(Re)create the MutatingWebhookConfiguration, keeping a caBundle already known."""
        existing = self.cluster.kubectl(
            "get", "mutatingwebhookconfiguration", self.mwc_name, "-o", "json", check=False
        )
        ca = None
        if existing.returncode == 0:
            bundle = json.loads(existing.stdout)["webhooks"][0]["clientConfig"].get("caBundle")
            ca = base64.b64decode(bundle) if bundle else None
        config = InjectionConfig(**{**_fields(self.config), "failure_policy": failure_policy})
        body = webhook_configuration(config, ca, url=f"https://127.0.0.1:{self.port}")
        body["webhooks"][0]["namespaceSelector"]["matchExpressions"].append(
            {"key": TEST_LABEL, "operator": "In", "values": [self.session]}
        )
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def start(self) -> None:
        if self.mode == "kopf":
            # The operator's own kopf wiring (handlers/injection.py) serving the webhook.
            argv = [
                str(ROOT / ".venv" / "bin" / "kopf"),
                "run",
                "--standalone",
                "--namespace",
                self.watch_namespace or self.operator_namespace,
                str(ROOT / "tests" / "integration" / "rbac" / "run_injection_handlers.py"),
            ]
        else:
            argv = [str(PYTHON), "-m", "refreshbus_operator.injection", "--check-interval", "1"]
        env = {
            "KUBECONFIG": self.kubeconfig or self.cluster.kubeconfig,
            "REFRESHBUS_INJECTION_ENABLED": "true",
            "REFRESHBUS_INJECTION_WEBHOOK_HOST": "127.0.0.1",
            "REFRESHBUS_INJECTION_WEBHOOK_PORT": str(self.port),
            "REFRESHBUS_INJECTION_OPERATOR_NAMESPACE": self.operator_namespace,
            "REFRESHBUS_INJECTION_WEBHOOK_CONFIGURATION": self.mwc_name,
            "REFRESHBUS_INJECTION_TLS_SECRET": self.config.tls_secret,
            "REFRESHBUS_INJECTION_CERT_DIR": str(self.workdir / "certs"),
            "REFRESHBUS_INJECTION_SIDECAR_IMAGE": SIDECAR_IMAGE,
            "REFRESHBUS_INJECTION_EXTRA_NAMES": "127.0.0.1",
            **self.env,
        }
        proc = spawn(argv, self.log, env=env)
        self.pid = proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"webhook exited {proc.returncode}\n{tail(self.log)}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise AssertionError(f"webhook not serving after 30s\n{tail(self.log)}")

    def healthy(self) -> bool:
        ctx = ssl.create_default_context()
        ca = self.ca_pem()
        if ca is None:
            return False
        ctx.load_verify_locations(cadata=ca.decode())
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{self.port}/healthz", timeout=1, context=ctx
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def ca_pem(self) -> bytes | None:
        if self.ca_override is not None:
            return self.ca_override
        out = self.cluster.kubectl(
            "-n",
            self.operator_namespace,
            "get",
            "secret",
            self.config.tls_secret,
            "-o",
            "jsonpath={.data.ca\\.crt}",
            check=False,
        )
        return base64.b64decode(out.stdout) if out.returncode == 0 and out.stdout else None

    def stop(self) -> None:
        if self.pid is not None:
            stop_group(self.pid)
            self.pid = None


def _fields(config: InjectionConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def served_certificate(port: int) -> bytes:
    """The PEM certificate the webhook presents right now."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()
