"""The node itself: real pods run to completion, logs come back through the kubelet, and
containers of one pod share a process namespace (what the sidecar's signal action needs)."""

from __future__ import annotations

import json
import time

import pytest
from refreshbus_testenv.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

BUSYBOX = "refreshbus/busybox:dev"
#: Shell function printing the PID whose command line matches (busybox has no pgrep).
FIND_TARGET = (
    "find_target() { for p in /proc/[0-9]*; do "
    "grep -q 'hup-targe[t]' $p/cmdline 2>/dev/null && echo ${p#/proc/} && return 0; done; return 1; }; "
)


def _wait_phase(cluster: ControlPlane, ns: str, pod: str, phases: set[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.kubectl("-n", ns, "get", "pod", pod, "-o", "jsonpath={.status.phase}").stdout
        if phase in phases:
            return phase
        time.sleep(0.5)
    describe = cluster.kubectl("-n", ns, "describe", "pod", pod, check=False).stdout
    raise AssertionError(f"pod {pod} still {phase!r} after {timeout}s:\n{describe}")


def _apply(cluster: ControlPlane, ns: str, manifest: dict[str, object]) -> None:
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(manifest))


def test_busybox_pod_runs_to_completion_and_logs_work(cluster: ControlPlane, namespace: str) -> None:
    _apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "hello"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "hello",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "echo hello from a real pod; id -u"],
                    }
                ],
            },
        },
    )
    assert _wait_phase(cluster, namespace, "hello", {"Succeeded", "Failed"}) == "Succeeded"
    logs = cluster.kubectl("-n", namespace, "logs", "hello").stdout
    assert "hello from a real pod" in logs
    status = cluster.get_json("-n", namespace, "pod", "hello")["status"]
    assert status["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert status["podIP"].startswith("10.244.")


def test_shared_process_namespace_lets_one_container_signal_another(
    cluster: ControlPlane, namespace: str
) -> None:
    # "hup-targe[t]" matches the target's command line but not the sender's own.
    _apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "signals"},
            "spec": {
                "restartPolicy": "Never",
                "shareProcessNamespace": True,
                "containers": [
                    {
                        "name": "target",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": [
                            "sh",
                            "-c",
                            "trap 'echo got-SIGHUP; exit 0' HUP; echo hup-target ready; "
                            "while true; do sleep 1 & wait $!; done",
                        ],
                    },
                    {
                        "name": "sender",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": [
                            "sh",
                            "-c",
                            FIND_TARGET + "until find_target; do sleep 0.2; done; sleep 1; "
                            "kill -HUP $(find_target) && echo sent",
                        ],
                    },
                ],
            },
        },
    )
    assert _wait_phase(cluster, namespace, "signals", {"Succeeded", "Failed"}) == "Succeeded"
    assert "got-SIGHUP" in cluster.kubectl("-n", namespace, "logs", "signals", "-c", "target").stdout
    assert "sent" in cluster.kubectl("-n", namespace, "logs", "signals", "-c", "sender").stdout


def test_pods_reach_the_api_server_through_the_kubernetes_service(
    cluster: ControlPlane, namespace: str
) -> None:
    """kube-proxy's ClusterIP rules + the node address: in-cluster clients (operator,
    sidecars) reach https://$KUBERNETES_SERVICE_HOST like on any cluster."""
    script = (
        "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; "
        "wget -q -O- --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"
    )
    _apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "apicheck"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", script],
        }]},
    })  # fmt: skip
    _wait_phase(cluster, namespace, "apicheck", {"Succeeded", "Failed"})
    logs = cluster.kubectl("-n", namespace, "logs", "apicheck").stdout
    assert "10.96.0.1:443" in logs
    assert '"gitVersion": "v1.34.4"' in logs, logs
