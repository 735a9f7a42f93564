"""Sidecar injection through the real API server, which calls the webhook over TLS."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from injharness import served_certificate
from refreshbus_operator import autorefresh, targets
from refreshbus_operator.injection import certs
from refreshbus_wire import pods

pytestmark = pytest.mark.integration

SIDECAR = pods.SIDECAR_CONTAINER


def pod(annotations: dict[str, str] | None = None, name: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"annotations": annotations or {}}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = "web-"
    body: dict[str, Any] = {
        "containers": [
            {
                "name": "app",
                "image": "nginx:1.27",
                "volumeMounts": [{"name": "config", "mountPath": "/etc/nginx/conf.d"}],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": "web-config"}}],
    }
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


OPT_IN = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web-config"}


@pytest.fixture
def with_config(cluster: Any, ns: str) -> str:
    cluster.kubectl("-n", ns, "create", "configmap", "web-config", "--from-literal=default.conf=server {}")
    cluster.kubectl("-n", ns, "create", "secret", "generic", "web-creds", "--from-literal=password=s3cret")
    return ns


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def sidecars(stored: dict[str, Any]) -> list[dict[str, Any]]:
    spec = stored["spec"]
    return [c for c in (*spec.get("initContainers", []), *spec["containers"]) if c["name"] == SIDECAR]


def test_ca_bundle_is_patched_and_the_certificate_covers_the_service(cluster: Any, injector_up: Any) -> None:
    mwc = cluster.get_json("mutatingwebhookconfiguration", injector_up.mwc_name)
    ca = injector_up.ca_pem()
    assert ca is not None
    assert base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"]) == ca
    secret = cluster.get_json("-n", injector_up.operator_namespace, "secret", injector_up.config.tls_secret)
    tls = base64.b64decode(secret["data"]["tls.crt"])
    assert certs.signed_by(tls, ca)
    svc = f"refreshbus-webhook.{injector_up.operator_namespace}.svc"
    assert certs.covers(tls, [svc, "127.0.0.1"])


def test_pod_without_the_annotation_is_untouched(with_config: str, create_pod: Callable[..., Any]) -> None:
    stored = create_pod(with_config, pod())
    assert sidecars(stored) == []
    assert stored["spec"]["containers"][0]["volumeMounts"][0]["name"] == "config"
    assert pods.ANN_INJECTED not in stored["metadata"].get("annotations", {})


def test_annotated_pod_gets_a_native_sidecar_and_keeps_its_paths(
    with_config: str, create_pod: Callable[..., Any]
) -> None:
    stored = create_pod(
        with_config,
        pod({**OPT_IN, pods.ANN_SECRETS: "web-creds", pods.ANN_RELOAD_URL: "http://127.0.0.1:8080/-/reload"}),
    )
    spec = stored["spec"]
    sidecar = spec["initContainers"][0]
    assert sidecar["name"] == SIDECAR
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "example.test/refreshbus-sidecar:test"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert sidecar["resources"]["requests"] == {"cpu": "10m", "memory": "32Mi"}
    assert sidecar["resources"]["limits"] == {"memory": "64Mi"}
    env = env_of(sidecar)
    assert env[pods.ENV_POD_NAME]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env[pods.ENV_POD_UID]["fieldRef"]["fieldPath"] == "metadata.uid"
    assert env[pods.ENV_NAMESPACE]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env[pods.ENV_CONFIGMAPS] == "web-config"
    assert env[pods.ENV_SECRETS] == "web-creds"
    assert env[pods.ENV_ACTION] == "http"
    assert env[pods.ENV_RELOAD_URL] == "http://127.0.0.1:8080/-/reload"
    assert env[pods.ENV_BROKER_URLS_FILE] == "/etc/refreshbus/broker/urls"
    assert pods.ENV_BROKER_URLS not in env
    # Same path for the app, now served from the sidecar-managed volume.
    assert spec["containers"][0]["volumeMounts"][0] == {
        "name": "refreshbus-config",
        "mountPath": "/etc/nginx/conf.d",
        "subPath": "configmap-web-config",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "config" not in volumes
    assert volumes["refreshbus-config"]["emptyDir"] == {"medium": "Memory"}
    assert volumes["refreshbus-broker"]["secret"]["secretName"] == "refreshbus-broker"
    assert stored["metadata"]["annotations"][pods.ANN_INJECTED] == "true"
    assert "shareProcessNamespace" not in spec
    # The sidecar has its own token volume; the ServiceAccount admission plugin (which ran
    # before the webhook) gave the app its usual one. One mount per path, no clash.
    sidecar_paths = [m["mountPath"] for m in sidecar["volumeMounts"]]
    assert sidecar_paths.count("/var/run/secrets/kubernetes.io/serviceaccount") == 1
    token_source = volumes["refreshbus-api-access"]["projected"]["sources"][0]
    assert token_source["serviceAccountToken"]["path"] == "token"


def test_signal_pod_shares_the_process_namespace_and_the_app_user(
    with_config: str, create_pod: Callable[..., Any]
) -> None:
    stored = create_pod(
        with_config,
        pod(
            {**OPT_IN, pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx: master"},
            securityContext={"runAsUser": 101, "runAsGroup": 101},
        ),
    )
    assert stored["spec"]["shareProcessNamespace"] is True
    sc = sidecars(stored)[0]["securityContext"]
    assert sc["runAsUser"] == 101
    assert sc["runAsGroup"] == 101
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert env_of(sidecars(stored)[0])[pods.ENV_SIGNAL] == "SIGHUP"


def test_signal_pod_of_unknown_user_gets_cap_kill_and_a_warning(cluster: Any, with_config: str) -> None:
    proc = cluster.kubectl(
        "-n",
        with_config,
        "create",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(pod({**OPT_IN, pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx"})),
    )
    stored = json.loads(proc.stdout)
    sc = sidecars(stored)[0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["KILL"]}
    assert "CAP_KILL" in proc.stderr  # the admission warning, as kubectl prints it


def test_restricted_namespace_admits_a_compliant_injected_pod(
    cluster: Any, with_config: str, create_pod: Callable[..., Any]
) -> None:
    """Pod Security "restricted" runs after the webhook: the sidecar must comply too."""
    cluster.kubectl("label", "namespace", with_config, "pod-security.kubernetes.io/enforce=restricted")
    restricted_sc = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    body = pod({**OPT_IN, pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "app"}, securityContext=restricted_sc)
    body["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    stored = create_pod(with_config, body)
    assert sidecars(stored)[0]["securityContext"]["runAsUser"] == 1000


def test_restricted_namespace_refuses_a_signal_pod_without_a_user(
    cluster: Any, with_config: str, create_pod: Callable[..., Any]
) -> None:
    cluster.kubectl("label", "namespace", with_config, "pod-security.kubernetes.io/enforce=restricted")
    proc = create_pod(
        with_config, pod({**OPT_IN, pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "app"}), check=False
    )
    assert proc.returncode != 0
    assert 'enforces Pod Security "restricted", which forbids adding CAP_KILL' in proc.stderr
    assert "set securityContext.runAsUser" in proc.stderr


def test_deployment_pod_learns_its_workload_from_the_replicaset(
    with_config: str, create_pod: Callable[..., Any]
) -> None:
    body = pod(OPT_IN)
    body["metadata"]["generateName"] = "orders-api-6c9f7d8b5-"
    body["metadata"]["labels"] = {"app": "orders", "pod-template-hash": "6c9f7d8b5"}
    body["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "orders-api-6c9f7d8b5",
            "uid": "00000000-0000-0000-0000-000000000001",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    env = env_of(sidecars(create_pod(with_config, body))[0])
    assert env[pods.ENV_WORKLOAD_KIND] == "Deployment"
    assert env[pods.ENV_WORKLOAD_NAME] == "orders-api"


def test_subpath_file_mount_is_pointed_at_the_sidecars_in_place_file(
    cluster: Any, with_config: str
) -> None:
    body = pod(OPT_IN)
    body["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "config", "mountPath": "/etc/nginx/conf.d/default.conf", "subPath": "default.conf"}
    ]
    proc = cluster.kubectl("-n", with_config, "create", "-o", "json", "-f", "-", input=json.dumps(body))
    stored = json.loads(proc.stdout)
    mounts = {m["mountPath"]: m for m in stored["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/etc/nginx/conf.d/default.conf"] == {
        "name": "refreshbus-config",
        "mountPath": "/etc/nginx/conf.d/default.conf",
        "subPath": ".inplace/configmap-web-config/default.conf",
        "readOnly": True,
    }
    assert not [p for p in mounts if p.startswith("/refreshbus")]  # no copy beside it any more
    assert "config" not in [v["name"] for v in stored["spec"]["volumes"]]
    assert env_of(sidecars(stored)[0])[pods.ENV_INPLACE_FILES] == "configmap-web-config/default.conf"
    assert "subPath" not in proc.stderr


def test_an_already_injected_pod_is_not_injected_again(
    cluster: Any, with_config: str, create_pod: Callable[..., Any]
) -> None:
    first = create_pod(with_config, pod(OPT_IN))
    # What `kubectl get pod -o json | kubectl create -f -` (under a new name) sends.
    copy = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": first["metadata"]["name"] + "-copy",
            "annotations": first["metadata"]["annotations"],
        },
        "spec": {k: v for k, v in first["spec"].items() if k != "nodeName"},
    }
    second = create_pod(with_config, copy)
    assert len(sidecars(second)) == 1
    assert second["spec"]["volumes"] == first["spec"]["volumes"]


def test_operator_namespace_is_excluded(
    cluster: Any, injector_up: Any, create_pod: Callable[..., Any]
) -> None:
    ns = injector_up.operator_namespace
    cluster.kubectl(
        "label", "namespace", ns, f"refreshbus-test/injection={injector_up.session}", "--overwrite"
    )
    cluster.kubectl("-n", ns, "create", "serviceaccount", "default", check=False)
    cluster.kubectl("-n", ns, "create", "configmap", "web-config", "--from-literal=a=b", check=False)
    assert sidecars(create_pod(ns, pod(OPT_IN))) == []


def test_namespace_opt_out_label(cluster: Any, with_config: str, create_pod: Callable[..., Any]) -> None:
    cluster.kubectl("label", "namespace", with_config, "refreshbus.io/injection=disabled")
    assert sidecars(create_pod(with_config, pod(OPT_IN))) == []


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            {pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx", pods.ANN_RELOAD_URL: "http://127.0.0.1/r"},
            "refreshbus.io/signal and refreshbus.io/reload-url are both set",
        ),
        ({pods.ANN_SIGNAL: "SIGBOGUS", pods.ANN_PROCESS: "nginx"}, "unknown signal 'SIGBOGUS'"),
        ({pods.ANN_RELOAD_URL: "localhost:8080/reload"}, "must be an http:// or https:// URL"),
        ({pods.ANN_CONFIGMAPS: ""}, "neither refreshbus.io/configmaps nor refreshbus.io/secrets names"),
        (
            {pods.ANN_CONFIGMAPS: "web-config,nope"},
            "refreshbus.io/configmaps names ConfigMap 'nope', which does not exist in namespace",
        ),
        (
            {pods.ANN_SECRETS: "missing-creds"},
            "refreshbus.io/secrets names Secret 'missing-creds', which does not exist in namespace",
        ),
    ],
)
def test_rejections_explain_themselves(
    with_config: str, create_pod: Callable[..., Any], annotations: dict[str, str], message: str
) -> None:
    proc = create_pod(with_config, pod({**OPT_IN, **annotations}), check=False)
    assert proc.returncode != 0
    assert 'admission webhook "inject.refreshbus.io" denied the request' in proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize("value", ["true", "TRUE", " True ", "false", "False", "", "yes", "1", "sometimes"])
@pytest.mark.parametrize("annotation", [pods.ANN_INJECT, pods.ANN_AUTO_REFRESH])
def test_admission_and_auto_refresh_read_booleans_alike(
    cluster: Any, with_config: str, create_pod: Callable[..., Any], annotation: str, value: str
) -> None:
    """One rule for every boolean of the pod contract: true/false in any case, anything
    else refused by the webhook -- and auto-refresh and targeting read the workload's
    template (as stored by the API server) the same way."""
    annotations = {**OPT_IN, pods.ANN_AUTO_REFRESH: "true", annotation: value}
    proc = create_pod(with_config, pod(annotations), check=False)
    valid = value.strip().lower() in {"true", "false", ""}
    asks = annotations[pods.ANN_INJECT].strip().lower() != "false"
    if valid:
        assert proc.returncode == 0, proc.stderr
        stored = json.loads(proc.stdout)
        assert bool(sidecars(stored)) == (asks and annotations[pods.ANN_INJECT].strip() != "")
        assert targets.pod_from_json(stored).opted_in == bool(sidecars(stored))
    else:
        assert 'admission webhook "inject.refreshbus.io" denied the request' in proc.stderr
        assert f"{annotation}: {value!r} is not \"true\" or \"false\"" in proc.stderr

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": with_config},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": annotations},
                         "spec": pod()["spec"]},
        },
    }
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(deployment))
    tracked = autorefresh.opted_in(json.loads(out.stdout))
    auto_on = annotations[pods.ANN_AUTO_REFRESH].strip().lower() == "true"
    assert (tracked is not None) == (valid and auto_on)


def test_webhook_down_with_failure_policy_ignore_creates_the_pod_uninjected(
    with_config: str, injector_up: Any, create_pod: Callable[..., Any]
) -> None:
    injector_up.stop()
    stored = create_pod(with_config, pod(OPT_IN))
    assert sidecars(stored) == []


def test_webhook_down_with_failure_policy_fail_refuses_the_pod(
    with_config: str, injector_up: Any, create_pod: Callable[..., Any]
) -> None:
    injector_up.stop()
    injector_up.register("Fail")
    proc = create_pod(with_config, pod(OPT_IN), check=False)
    assert proc.returncode != 0
    assert 'failed calling webhook "inject.refreshbus.io"' in proc.stderr
    # Pods that did not opt in are refused too while it is down: the webhook cannot see
    # annotations before it is called. That is why Ignore is the default.
    proc = create_pod(with_config, pod(), check=False)
    assert proc.returncode != 0


def test_a_lost_tls_secret_is_regenerated_served_and_trusted_without_restart(
    cluster: Any, with_config: str, injector_up: Any, create_pod: Callable[..., Any]
) -> None:
    old_ca = injector_up.ca_pem()
    pid = injector_up.pid
    cluster.kubectl("-n", injector_up.operator_namespace, "delete", "secret", injector_up.config.tls_secret)

    def rotated() -> bool:
        ca = injector_up.ca_pem()
        if ca is None or ca == old_ca:
            return False
        mwc = cluster.get_json("mutatingwebhookconfiguration", injector_up.mwc_name)
        bundle = base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"])
        return bundle == ca and certs.signed_by(served_certificate(injector_up.port), ca)

    deadline = time.monotonic() + 30
    while not rotated():
        assert time.monotonic() < deadline, "webhook did not take up a new CA and certificate"
        time.sleep(0.3)
    assert injector_up.pid == pid  # same process: the certificate was reloaded in place
    assert len(sidecars(create_pod(with_config, pod(OPT_IN)))) == 1


class _LabelAdder(http.server.BaseHTTPRequestHandler):
    """A second mutating webhook that runs after ours and changes the pod."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"touched-by": "second-webhook"}}]
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def second_webhook(cluster: Any, ns: str, injector_up: Any, tmp_path: Path) -> Iterator[None]:
    bundle = certs.new_bundle(["127.0.0.1"], 1)
    (tmp_path / "tls.crt").write_bytes(bundle.tls_crt)
    (tmp_path / "tls.key").write_bytes(bundle.tls_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LabelAdder)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    name = f"zz-second-{injector_up.session}"  # sorts after ours: called after it
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "second.example.test",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{server.server_address[1]}/",
                            "caBundle": base64.b64encode(bundle.ca_crt).decode(),
                        },
                        "rules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["pods"],
                            }
                        ],
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                        "failurePolicy": "Fail",
                        "reinvocationPolicy": "Never",
                    }
                ],
            }
        ),
    )
    try:
        yield
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)
        server.shutdown()
        server.server_close()


def test_reinvocation_after_another_webhook_does_not_inject_twice(
    with_config: str, injector_up: Any, second_webhook: None, create_pod: Callable[..., Any]
) -> None:
    stored = create_pod(with_config, pod(OPT_IN, name="reinvoked"))
    assert stored["metadata"]["labels"] == {"touched-by": "second-webhook"}
    assert len(sidecars(stored)) == 1
    assert [v["name"] for v in stored["spec"]["volumes"]].count("refreshbus-config") == 1
    # reinvocationPolicy IfNeeded: the API server called ours again after the second one changed the pod.
    log = injector_up.log.read_text()
    assert f"pod {with_config}/reinvoked: injected" in log
    assert f"pod {with_config}/reinvoked: already injected" in log
