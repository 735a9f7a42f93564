"""The chart on the real node: ``helm install`` with the locally built images.

Used by the node suite (tests/e2e/node) and the vs-peers benchmark (bench/vs_peers_bench.py).
With a broker on the host (on the node address) the chart runs in its "existing broker"
mode, ``broker.existingSecret``; without one (``broker=None``) it is the DEFAULT install:
the chart's embedded RabbitMQ (image ``refreshbus/rabbitmq:dev``, Debian's package),
reached by its Service's DNS name. Only the images differ from the chart's defaults.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from refreshbus_testenv.binaries import ROOT
from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.procs import InfraError

RELEASE = "refreshbus"
RELEASE_NS = "refreshbus-system"
#: The images hack/build-images.py builds; nothing can be pulled.
LOCAL_IMAGES: dict[str, Any] = {
    "operator": {"image": {"repository": "refreshbus/operator", "tag": "dev", "pullPolicy": "Never"}},
    "sidecar": {"image": {"repository": "refreshbus/sidecar", "tag": "dev", "pullPolicy": "Never"}},
    "rabbitmq": {
        "image": {"repository": "docker.io/refreshbus/rabbitmq", "tag": "dev", "pullPolicy": "Never"}
    },
}


def helm_binary() -> str:
    """The pinned helm from hack/build-helm.sh's cache (built on first use)."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def install(
    plane: ControlPlane,
    broker: Broker | None,
    workdir: Path,
    operator_env: dict[str, str] | None = None,
    timeout: float = 180,
    values: dict[str, Any] | None = None,
) -> None:
    """``helm upgrade --install`` the chart into :data:`RELEASE_NS` and wait for it.
    ``operator_env``: extra operator environment (documented operator knobs); ``values``:
    chart values over the local images' (e.g. ``{"rabbitmq": {"replicas": 3}}``)."""
    plane.kubectl("create", "namespace", RELEASE_NS, check=False)
    values = _merged(json.loads(json.dumps(LOCAL_IMAGES)), values or {})
    if operator_env:
        values["operator"]["extraEnv"] = [{"name": k, "value": v} for k, v in operator_env.items()]
    if broker is not None:
        for secret, key, user in (
            ("rb-broker", "operator-urls", "refreshbus-operator"),
            ("rb-broker-sidecar", "sidecar-urls", "refreshbus-sidecar"),
        ):
            manifest = plane.kubectl(
                "-n", RELEASE_NS, "create", "secret", "generic", secret,
                f"--from-literal={key}={broker.url(user)}", "--dry-run=client", "-o", "json",
            ).stdout  # fmt: skip
            plane.kubectl("-n", RELEASE_NS, "apply", "-f", "-", input=manifest)
        values["broker"] = {"existingSecret": "rb-broker", "existingSidecarSecret": "rb-broker-sidecar"}
    workdir.mkdir(parents=True, exist_ok=True)
    values_file = workdir / "values.json"
    values_file.write_text(json.dumps(values))
    proc = subprocess.run(
        [helm_binary(), "upgrade", "--install", RELEASE, str(ROOT / "charts" / "refreshbus"),
         "-n", RELEASE_NS, "-f", str(values_file), "--wait", "--timeout", f"{int(timeout)}s",
         f"--kubeconfig={plane.kubeconfig}"],
        capture_output=True, text=True, check=False, timeout=timeout + 60,
    )  # fmt: skip
    if proc.returncode != 0:
        raise InfraError(f"helm install failed:\n{proc.stdout}\n{proc.stderr}")
    # The operator puts its CA into the injection webhook once it runs: until then no pod
    # would be injected.
    deadline = time.monotonic() + 60
    while not _webhook_ready(plane):
        if time.monotonic() > deadline:
            raise InfraError("the operator did not register its injection webhook's CA within 60 s")
        time.sleep(0.3)


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merged(base[key], value)
        else:
            base[key] = value
    return base


def _webhook_ready(plane: ControlPlane) -> bool:
    hooks = plane.get_json("mutatingwebhookconfigurations")["items"]
    bundles = [w["clientConfig"].get("caBundle") for h in hooks for w in h["webhooks"]]
    return bool(bundles) and all(bundles)


def uninstall(plane: ControlPlane, timeout: float = 120) -> None:
    subprocess.run(
        [helm_binary(), "uninstall", RELEASE, "-n", RELEASE_NS, f"--kubeconfig={plane.kubeconfig}"],
        check=False, timeout=timeout,
    )  # fmt: skip
