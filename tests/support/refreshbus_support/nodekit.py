"""Helpers of the real-node end-to-end suite (tests/e2e/node): Helm, the apps' pods as the
suite sees them (HTTP to pod IPs from the host), ConfigMap edits and ConfigRefresh rounds."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from refreshbus_testenv.release import LOCAL_IMAGES, RELEASE, RELEASE_NS, helm_binary

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "refreshbus"
#: "The previous chart version" for the upgrade test: the chart (0.1.0) and the operator
#: and sidecar as they were on main before issue 11 -- before the quorum ack queue, whose
#: migration the upgrade then exercises. (d9dd124, the other candidate, is also 0.1.0 but
#: predates acks bound to pod identity: an upgrade from it tests an older step.)
PREVIOUS_CHART_COMMIT = "652bcf7"


class Cluster(Protocol):
    """What these helpers need of the ``cluster`` fixture (refreshbus_testenv.ControlPlane)."""

    @property
    def kubeconfig(self) -> str: ...

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]: ...

    def get_json(self, *args: str) -> Any: ...


def http_get(ip: str, path: str = "/", timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=timeout) as resp:
        return str(resp.read().decode())


def http_post(ip: str, path: str) -> str:
    req = urllib.request.Request(f"http://{ip}:8080{path}", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=2) as resp:
        return str(resp.read().decode())


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError, KeyError, subprocess.SubprocessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass(frozen=True)
class PodView:
    name: str
    ip: str
    app: str
    container_ids: dict[str, str]
    restarts: int
    uid: str


def pods(cluster: Cluster, ns: str, selector: str) -> list[PodView]:
    """Running, not terminating pods matching ``selector``, sorted by name."""
    items = cluster.get_json("-n", ns, "pods", "-l", selector)["items"]
    views = []
    for p in items:
        if p["metadata"].get("deletionTimestamp") or p["status"].get("phase") != "Running":
            continue
        statuses = p["status"].get("containerStatuses", []) + p["status"].get("initContainerStatuses", [])
        views.append(PodView(
            name=p["metadata"]["name"], ip=p["status"].get("podIP", ""),
            app=p["metadata"]["labels"].get("app", ""),
            container_ids={s["name"]: s.get("containerID", "") for s in statuses},
            restarts=sum(s.get("restartCount", 0) for s in statuses),
            uid=p["metadata"]["uid"],
        ))  # fmt: skip
    return sorted(views, key=lambda v: v.name)


def served_version(ip: str) -> str:
    """What an app serves, reduced to its version marker."""
    body = http_get(ip)
    if body.startswith("{"):
        return str(json.loads(body)["config"]["version"])
    return body.strip()  # nginx: the greeting


def apply(cluster: Cluster, ns: str, obj: dict[str, Any] | str) -> None:
    text = obj if isinstance(obj, str) else json.dumps(obj)
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=text)


def set_config(cluster: Cluster, ns: str, configmap: str, key: str, value: str) -> None:
    cluster.kubectl(
        "-n", ns, "patch", "configmap", configmap, "--type", "merge", "-p", json.dumps({"data": {key: value}})
    )


def json_config(app: str, version: str) -> str:
    return json.dumps({"app": app, "version": version})


def refresh(
    cluster: Cluster, ns: str, configmap: str, target: dict[str, Any], deadline: int = 30
) -> str:
    name = f"cfr-{uuid.uuid4().hex[:6]}"
    apply(cluster, ns, {
        "apiVersion": "refreshbus.io/v1alpha1", "kind": "ConfigRefresh", "metadata": {"name": name},
        "spec": {"sources": [{"configMap": {"name": configmap}}], "target": target,
                 "deadlineSeconds": deadline},
    })  # fmt: skip
    return name


FINAL = {"Succeeded", "PartiallyFailed", "Failed", "TimedOut"}


def wait_cfr(cluster: Cluster, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        status = cluster.get_json("-n", ns, "configrefresh", name).get("status") or {}
        return status if status.get("phase") in FINAL else None

    return dict(wait_for(final, timeout, f"ConfigRefresh {name} to finish"))


def get_cfr_table(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    """``kubectl get cfr NAME`` as the user sees it: header -> value. Cut at the header's
    column starts, not at blanks: a column may be empty (STEP, outside a rollout)."""
    header, row = cluster.kubectl("-n", ns, "get", "cfr", name).stdout.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], len(row)]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run helm against ``cluster``; a failure fails the test with helm's output."""
    proc = subprocess.run(
        [helm_binary(), *args, f"--kubeconfig={cluster.kubeconfig}"],
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def install(cluster: Cluster, values: dict[str, Any], workdir: Path, chart: Path = CHART) -> float:
    """``helm upgrade --install`` the release with ``values`` (``--wait``); returns seconds."""
    cluster.kubectl("create", "namespace", RELEASE_NS, check=False)
    values_file = workdir / f"values-{uuid.uuid4().hex[:6]}.json"
    values_file.write_text(json.dumps(values))
    started = time.monotonic()
    helm(cluster, "upgrade", "--install", RELEASE, str(chart), "-n", RELEASE_NS, "-f", str(values_file),
         "--wait", "--timeout", "240s", timeout=280)  # fmt: skip
    return time.monotonic() - started


def previous_release(workdir: Path) -> Path:
    """The checkout at :data:`PREVIOUS_CHART_COMMIT` (chart, operator, sidecar), unpacked
    under ``workdir``: its chart is the "previous version", its images the ones it ran."""
    archive = workdir / "previous.tar"
    paths = ["pyproject.toml", "README.md", "operator", "sidecar", "charts/refreshbus"]
    command = ["git", "-C", str(ROOT), "archive", "-o", str(archive), PREVIOUS_CHART_COMMIT, *paths]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # A shallow clone (CI's may be one) lacks the commit: fetch the history once.
        subprocess.run(["git", "-C", str(ROOT), "fetch", "--quiet", "--unshallow"],
                       capture_output=True, text=True, check=False, timeout=300)
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (
        f"the previous release ({PREVIOUS_CHART_COMMIT}) is not in this checkout (a shallow "
        f"clone? `git fetch --unshallow`): {proc.stderr}"
    )
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "previous", filter="data")
    return workdir / "previous"


def local_images(tag: str = "dev") -> dict[str, Any]:
    """Values that point the chart at the locally built images (and only that)."""
    values = json.loads(json.dumps(LOCAL_IMAGES))
    for component in ("operator", "sidecar"):
        values[component]["image"]["tag"] = tag
    return dict(values)


def uninstall(cluster: Cluster) -> None:
    """Uninstall the release if there is one, and delete what it keeps by design (the
    broker's claim), so that the next install starts from nothing."""
    if cluster.kubectl("-n", RELEASE_NS, "get", "secret", "-l", "owner=helm", "-o", "name").stdout.strip():
        helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "120s")
    cluster.kubectl(
        "-n", RELEASE_NS, "delete", "pvc", "-l", "app.kubernetes.io/component=broker", "--wait=true",
        timeout=120,
    )  # fmt: skip


BROKER = "app.kubernetes.io/component=broker"


def broker_state(cluster: Cluster) -> dict[str, str]:
    """The embedded broker's pod, volume and generated passwords, to compare across events."""
    pod = cluster.get_json("-n", RELEASE_NS, "pod", "-l", BROKER)["items"]
    claim = cluster.get_json("-n", RELEASE_NS, "pvc", "-l", BROKER)["items"]
    users = cluster.get_json("-n", RELEASE_NS, "secret", f"{RELEASE}-rabbitmq-users")["data"]
    return {
        "pod-uid": ",".join(p["metadata"]["uid"] for p in pod),
        "volume": ",".join(c["spec"].get("volumeName", "") for c in claim),
        "passwords": json.dumps(users, sort_keys=True),
    }
