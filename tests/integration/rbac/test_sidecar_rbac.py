"""Least privilege for sidecars, proven with the sidecar's own ServiceAccount token and
with impersonation against the real API server. The Role/RoleBinding are made by the
injection handlers running in a real kopf process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from refreshbus_operator.sidecar_rbac import object_name
from refreshbus_testenv.procs import spawn, stop_group, tail
from refreshbus_wire import pods
from refreshbus_wire.release import decode_record, record_name

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
KOPF = ROOT / ".venv" / "bin" / "kopf"
ROLE = object_name("Deployment", "web")
RECORD = record_name("Deployment", "web")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def deployment(
    namespace: str, configmaps: str, secrets: str, sa: str = "web-sa", rollout: str | None = None
) -> dict[str, Any]:
    annotations = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: configmaps, pods.ANN_SECRETS: secrets}
    if rollout is not None:
        annotations[pods.ANN_ROLLOUT] = rollout
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    }


@pytest.fixture
def other_namespace(cluster: Any) -> Iterator[str]:
    name = f"t-other-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("-n", name, "create", "configmap", "app-config", "--from-literal=a=b")
    cluster.kubectl("-n", name, "create", "secret", "generic", "app-secret", "--from-literal=p=q")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def workload_ns(cluster: Any, namespace: str) -> str:
    for cm in ("app-config", "other-config"):
        cluster.kubectl("-n", namespace, "create", "configmap", cm, "--from-literal=k=v")
    for secret in ("app-secret", "other-secret"):
        cluster.kubectl("-n", namespace, "create", "secret", "generic", secret, "--from-literal=k=v")
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "web-sa")
    return namespace


@pytest.fixture
def operator_ns(cluster: Any) -> Iterator[str]:
    name = f"rb-sys-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "-n",
        name,
        "create",
        "secret",
        "generic",
        "refreshbus-broker",
        "--from-literal=urls=amqp://sidecar:pw@rabbitmq:5672/%2F",
        # A user's Secret may hold more than the sidecars' URLs: never copied.
        "--from-literal=operator-urls=amqp://operator:secret@rabbitmq:5672/%2F",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def handlers(cluster: Any, workload_ns: str, operator_ns: str, tmp_path: Path) -> Iterator[None]:
    """A real kopf process running the injection handlers for the test namespace."""
    log = tmp_path / "kopf.log"
    proc = spawn(
        [
            str(KOPF),
            "run",
            "--standalone",
            "--namespace",
            workload_ns,
            str(HERE / "run_injection_handlers.py"),
        ],
        log,
        env={"KUBECONFIG": str(cluster.kubeconfig), "REFRESHBUS_INJECTION_OPERATOR_NAMESPACE": operator_ns},
    )
    try:
        time.sleep(0.5)
        assert proc.poll() is None, tail(log)
        yield
    finally:
        stop_group(proc.pid)
        print(tail(log, 40))


def as_sa(cluster: Any, namespace: str, sa: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    token = cluster.kubectl("-n", namespace, "create", "token", sa).stdout.strip()
    kubeconfig = cluster.kubeconfig_for_token(token, f"{namespace}-{sa}")

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(f"--kubeconfig={kubeconfig}", *args, check=False)

    return kubectl


def can_i(cluster: Any, namespace: str, sa: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", f"--as=system:serviceaccount:{namespace}:{sa}", *args, check=False)
    return out.stdout.strip() == "yes"


def role_names(cluster: Any, namespace: str) -> dict[str, list[str]] | None:
    out = cluster.kubectl("-n", namespace, "get", "role", ROLE, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    return {r["resources"][0]: r["resourceNames"] for r in json.loads(out.stdout)["rules"]}


def test_sidecar_reads_exactly_its_managed_objects(
    cluster: Any, workload_ns: str, other_namespace: str, operator_ns: str, handlers: None
) -> None:
    ns = workload_ns
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "app-config", "app-secret")))
    wait_for(lambda: role_names(cluster, ns), "the sidecar Role")
    wait_for(lambda: can_i(cluster, ns, "web-sa", "get", "secret/app-secret", "-n", ns), "the RoleBinding")
    # The release record too: every sidecar reads it (a 404 says "not versioned").
    assert role_names(cluster, ns) == {"configmaps": ["app-config", RECORD], "secrets": ["app-secret"]}

    # Real requests with the ServiceAccount's own token, as the sidecar makes them.
    sidecar = as_sa(cluster, ns, "web-sa")
    assert sidecar("-n", ns, "get", "configmap", "app-config").returncode == 0
    assert sidecar("-n", ns, "get", "secret", "app-secret").returncode == 0
    denied = sidecar("-n", ns, "get", "secret", "other-secret")
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert sidecar("-n", ns, "get", "configmap", "other-config").returncode != 0
    assert sidecar("-n", ns, "get", "secrets").returncode != 0  # list
    assert sidecar("-n", other_namespace, "get", "secret", "app-secret").returncode != 0
    assert sidecar("-n", other_namespace, "get", "configmap", "app-config").returncode != 0

    # The same, by impersonation.
    sa = ("web-sa",)
    assert can_i(cluster, ns, *sa, "get", "configmap/app-config", "-n", ns)
    assert not can_i(cluster, ns, *sa, "get", "secret/other-secret", "-n", ns)
    for verb in ("list", "watch"):
        assert not can_i(cluster, ns, *sa, verb, "secrets", "-n", ns)
        assert not can_i(cluster, ns, *sa, verb, "configmaps", "-n", ns)
    for verb in ("update", "patch", "delete"):
        assert not can_i(cluster, ns, *sa, verb, "secret/app-secret", "-n", ns)
    assert not can_i(cluster, ns, *sa, "get", "secret/app-secret", "-n", other_namespace)
    assert not can_i(cluster, ns, *sa, "get", "configmap/app-config", "-n", other_namespace)
    # Another ServiceAccount in the namespace gets nothing.
    assert not can_i(cluster, ns, "default", "get", "secret/app-secret", "-n", ns)

    # The broker Secret was copied in for the pods to mount: only the sidecars' key.
    copied = cluster.get_json("-n", ns, "secret", "refreshbus-broker")
    original = cluster.get_json("-n", operator_ns, "secret", "refreshbus-broker")
    assert set(original["data"]) == {"urls", "operator-urls"}
    assert copied["data"] == {"urls": original["data"]["urls"]}


def test_role_follows_annotation_changes_and_goes_with_the_workload(
    cluster: Any, workload_ns: str, handlers: None
) -> None:
    ns = workload_ns
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "app-config", "app-secret")))
    wait_for(lambda: role_names(cluster, ns), "the sidecar Role")

    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "other-config", "")))
    wait_for(
        lambda: role_names(cluster, ns) == {"configmaps": ["other-config", RECORD]}, "the Role to follow"
    )
    assert not can_i(cluster, ns, "web-sa", "get", "secret/app-secret", "-n", ns)
    assert not can_i(cluster, ns, "web-sa", "get", "configmap/app-config", "-n", ns)
    assert can_i(cluster, ns, "web-sa", "get", "configmap/other-config", "-n", ns)

    # A new ServiceAccount in the template: the binding moves to it.
    cluster.kubectl("-n", ns, "create", "serviceaccount", "web-sa-2")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "other-config", "", sa="web-sa-2")))
    wait_for(lambda: can_i(cluster, ns, "web-sa-2", "get", "configmap/other-config", "-n", ns), "rebinding")
    assert not can_i(cluster, ns, "web-sa", "get", "configmap/other-config", "-n", ns)

    cluster.kubectl("-n", ns, "delete", "deployment", "web")
    wait_for(lambda: role_names(cluster, ns) is None, "the Role to be removed")
    wait_for(
        lambda: cluster.kubectl("-n", ns, "get", "rolebinding", ROLE, check=False).returncode != 0,
        "the RoleBinding to be removed",
    )
    assert not can_i(cluster, ns, "web-sa-2", "get", "configmap/other-config", "-n", ns)


def test_opting_out_removes_the_role(cluster: Any, workload_ns: str, handlers: None) -> None:
    ns = workload_ns
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "app-config", "")))
    wait_for(lambda: role_names(cluster, ns), "the sidecar Role")
    body = deployment(ns, "app-config", "")
    body["spec"]["template"]["metadata"]["annotations"][pods.ANN_INJECT] = "false"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    wait_for(lambda: role_names(cluster, ns) is None, "the Role to be removed")


def test_a_rollout_workload_gets_its_release_record_at_once_and_its_sidecars_may_read_it(
    cluster: Any, workload_ns: str, handlers: None
) -> None:
    ns = workload_ns
    sidecar = as_sa(cluster, ns, "web-sa")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "app-config", "")))
    wait_for(lambda: can_i(cluster, ns, "web-sa", "get", f"configmap/{RECORD}", "-n", ns), "the Role")
    # Not versioned: no record, and the sidecar's GET of it is a 404, not a 403.
    missing = sidecar("-n", ns, "get", "configmap", RECORD)
    assert "NotFound" in missing.stderr, missing.stderr

    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "app-config", "", rollout="1,100%")))
    got = wait_for(lambda: sidecar("-n", ns, "get", "configmap", RECORD, "-o", "json").stdout, "the record")
    record = decode_record(json.loads(got))
    assert record.release.accepted.revision == 1
    assert record.files(record.release.accepted) == {"ConfigMap/app-config": {"k": b"v"}}
    uid = cluster.get_json("-n", ns, "deployment", "web")["metadata"]["uid"]
    refs = json.loads(got)["metadata"]["ownerReferences"]
    assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("Deployment", "web", uid)]

    # No longer versioned: the record goes, the sidecars follow the live ConfigMaps again.
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "app-config", "")))
    wait_for(lambda: cluster.kubectl("-n", ns, "get", "configmap", RECORD, check=False).returncode != 0,
             "the record to be removed")


def test_a_record_waits_for_its_configmaps_and_says_so_on_the_workload(
    cluster: Any, workload_ns: str, handlers: None
) -> None:
    ns = workload_ns
    versioned = deployment(ns, "late-config", "", rollout="1,100%")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(versioned))
    message = wait_for(lambda: workload_warnings(cluster, ns, "ConfigMapNotFound"), "the Event")
    assert "the release record of Deployment web waits for its ConfigMap(s) late-config" in message
    cluster.kubectl("-n", ns, "create", "configmap", "late-config", "--from-literal=k=late")
    # The workload's next event (here a label; in a cluster its pods, admitted now, update its
    # status) makes the record, with the content the ConfigMap has before any edit.
    cluster.kubectl("-n", ns, "label", "deployment", "web", "touched=yes")
    got = wait_for(lambda: cluster.kubectl("-n", ns, "get", "configmap", RECORD, "-o", "json",
                                           check=False).stdout, "the record")
    record = decode_record(json.loads(got))
    assert record.files(record.release.accepted) == {"ConfigMap/late-config": {"k": b"late"}}


def workload_warnings(cluster: Any, ns: str, reason: str) -> str:
    events = cluster.get_json("-n", ns, "events", "--field-selector", "involvedObject.kind=Deployment")
    return " ".join(e["message"] for e in events["items"] if e["reason"] == reason)


def test_a_record_too_large_is_reported_on_the_workload(
    cluster: Any, workload_ns: str, handlers: None
) -> None:
    ns = workload_ns
    for name in ("big-1", "big-2"):  # each fits in a ConfigMap; both do not fit in one record
        big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
               "data": {"k": "x" * 600_000}}
        cluster.kubectl("create", "-f", "-", input=json.dumps(big))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "big-1,big-2", "", rollout="1,100%")))

    message = wait_for(lambda: workload_warnings(cluster, ns, "RecordTooLarge"), "a RecordTooLarge Event")
    assert "the release record of Deployment web would be" in message
    assert "nothing was changed" in message
    assert cluster.kubectl("-n", ns, "get", "configmap", RECORD, check=False).returncode != 0


def test_role_carries_an_owner_reference_for_garbage_collection(
    cluster: Any, workload_ns: str, handlers: None
) -> None:
    ns = workload_ns
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment(ns, "app-config", "app-secret")))
    wait_for(lambda: role_names(cluster, ns), "the sidecar Role")
    uid = cluster.get_json("-n", ns, "deployment", "web")["metadata"]["uid"]
    for kind in ("role", "rolebinding"):
        refs = cluster.get_json("-n", ns, kind, ROLE)["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("Deployment", "web", uid)]


def test_broker_secret_copy_holds_only_the_sidecar_key(
    cluster: Any, workload_ns: str, operator_ns: str
) -> None:
    """ensure_broker_secret against the real API server: only ``key`` is copied; a copy with
    other keys (written by an older operator) is rewritten; a source without the key is
    "missing" and nothing is written."""
    from refreshbus_operator.sidecar_rbac import ensure_broker_secret
    from refreshbus_support.operator_kube import kube_client

    def ensure(namespace: str, source_namespace: str, name: str, key: str = "urls") -> str:
        async def call() -> str:
            async with kube_client(cluster.kubeconfig) as kube:
                return await ensure_broker_secret(kube, namespace, source_namespace, name, key)

        return asyncio.run(call())

    original = cluster.get_json("-n", operator_ns, "secret", "refreshbus-broker")["data"]

    def copy() -> dict[str, str]:
        return dict(cluster.get_json("-n", workload_ns, "secret", "refreshbus-broker")["data"])

    assert ensure(workload_ns, operator_ns, "refreshbus-broker") == "written"
    assert copy() == {"urls": original["urls"]}
    assert ensure(workload_ns, operator_ns, "refreshbus-broker") == "unchanged"

    # An old full copy (other credentials included) is replaced by the one key.
    cluster.kubectl("-n", workload_ns, "patch", "secret", "refreshbus-broker", "--type=merge",
                    "-p", json.dumps({"data": {"operator-urls": original["operator-urls"]}}))
    assert "operator-urls" in copy()
    assert ensure(workload_ns, operator_ns, "refreshbus-broker") == "written"
    assert copy() == {"urls": original["urls"]}

    # Another key name (REFRESHBUS_INJECTION_BROKER_SECRET_KEY), and a missing key.
    cluster.kubectl("-n", workload_ns, "delete", "secret", "refreshbus-broker")
    assert ensure(workload_ns, operator_ns, "refreshbus-broker", "operator-urls") == "written"
    assert copy() == {"operator-urls": original["operator-urls"]}
    cluster.kubectl("-n", workload_ns, "delete", "secret", "refreshbus-broker")
    assert ensure(workload_ns, operator_ns, "refreshbus-broker", "nope") == "missing"
    gone = cluster.kubectl("-n", workload_ns, "get", "secret", "refreshbus-broker", check=False)
    assert gone.returncode != 0
