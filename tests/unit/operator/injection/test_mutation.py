"""The pure injection decision: every rule, without an API server."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.identity import workload_of
from refreshbus_operator.injection.mutation import Decision, apply_patch, decide
from refreshbus_operator.injection.options import parse_options
from refreshbus_operator.injection.security import Namespace
from refreshbus_operator.injection.volumes import BROKER_VOLUME, SHARED_VOLUME, TOKEN_VOLUME
from refreshbus_wire import pods

CONFIG = InjectionConfig(sidecar_image="example/sidecar:1", operator_namespace="refreshbus-system")
NS = Namespace("apps")


def make_pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    base = {
        pods.ANN_INJECT: "true",
        pods.ANN_CONFIGMAPS: "app-config",
    }
    if annotations is not None:
        base = {**base, **annotations}
    base = {k: v for k, v in base.items() if v is not None}
    pod_spec: dict[str, Any] = {
        "containers": [
            {"name": "app", "image": "nginx", "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}
        ],
        "volumes": [{"name": "config", "configMap": {"name": "app-config"}}],
    }
    pod_spec.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "apps", "annotations": base},
        "spec": pod_spec,
    }


def injected(pod: dict[str, Any], ns: Namespace = NS, config: InjectionConfig = CONFIG) -> dict[str, Any]:
    decision = decide(pod, ns, config)
    assert decision.allowed, decision.message
    assert decision.injected, decision.message
    return apply_patch(pod, decision.patch)


def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    first = pod["spec"]["initContainers"][0]
    assert first["name"] == pods.SIDECAR_CONTAINER
    return first


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- opt-in and skips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "ns", "reason"),
    [
        (make_pod({pods.ANN_INJECT: None}), NS, "not opted in"),
        (make_pod({pods.ANN_INJECT: "false"}), NS, "not opted in"),
        (make_pod(), Namespace("kube-system"), "excluded"),
        (make_pod(), Namespace("kube-public"), "excluded"),
        (make_pod(), Namespace("kube-node-lease"), "excluded"),
        (make_pod(), Namespace("refreshbus-system"), "excluded"),
        (make_pod(), Namespace("apps", {"refreshbus.io/injection": "disabled"}), "labelled"),
        (make_pod({pods.ANN_INJECTED: "true"}), NS, "already injected"),
        (make_pod(initContainers=[{"name": pods.SIDECAR_CONTAINER, "image": "x"}]), NS, "already injected"),
    ],
)
def test_skipped_pods_are_admitted_unchanged(pod: dict[str, Any], ns: Namespace, reason: str) -> None:
    decision = decide(pod, ns, CONFIG)
    assert decision.allowed
    assert decision.patch == []
    assert reason in decision.message


def test_label_opts_in_too() -> None:
    pod = make_pod({pods.ANN_INJECT: None})
    pod["metadata"]["labels"] = {pods.ANN_INJECT: "true"}
    assert decide(pod, NS, CONFIG).injected


def test_injecting_twice_changes_nothing() -> None:
    once = injected(make_pod())
    again = decide(once, NS, CONFIG)
    assert again.allowed
    assert again.patch == []


# -- rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({pods.ANN_CONFIGMAPS: None}, "neither refreshbus.io/configmaps nor refreshbus.io/secrets"),
        ({pods.ANN_CONFIGMAPS: " , "}, "neither refreshbus.io/configmaps nor refreshbus.io/secrets"),
        ({pods.ANN_CONFIGMAPS: "Bad_Name"}, "'Bad_Name' is not a valid object name"),
        (
            {pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx", pods.ANN_RELOAD_URL: "http://127.0.0.1/r"},
            "are both set: choose one reload action",
        ),
        ({pods.ANN_SIGNAL: "SIGFOO", pods.ANN_PROCESS: "nginx"}, "unknown signal 'SIGFOO'"),
        ({pods.ANN_SIGNAL: "SIGHUP"}, "refreshbus.io/signal needs refreshbus.io/process"),
        ({pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "(("}, "is not a valid regular expression"),
        ({pods.ANN_RELOAD_URL: "ftp://x/reload"}, "must be an http:// or https:// URL"),
        ({pods.ANN_RELOAD_URL: "not a url"}, "must be an http:// or https:// URL"),
        ({pods.ANN_RELOAD_URL: "http:///reload"}, "has no host"),
        ({pods.ANN_RELOAD_URL: "http://127.0.0.1:99999/reload"}, "has an invalid port"),
        (
            {pods.ANN_RELOAD_METHOD: "POST"},
            "refreshbus.io/reload-method is set without refreshbus.io/reload-url",
        ),
        ({pods.ANN_RELOAD_URL: "http://127.0.0.1:8080/r", pods.ANN_RELOAD_METHOD: "DELETE"}, "is not one of"),
        ({pods.ANN_HEALTH_URL: "localhost:8080"}, "refreshbus.io/health-url"),
        ({pods.ANN_AUTO_REFRESH: "sometimes"}, "refreshbus.io/auto-refresh: 'sometimes'"),
        ({pods.ANN_ROLLOUT: "1,25%"}, "refreshbus.io/rollout: the last step must be 100%"),
        (
            {pods.ANN_ROLLOUT: "1,100%", pods.ANN_ROLLOUT_BAKE: "30"},
            "refreshbus.io/rollout-bake: '30' is not",
        ),
        ({pods.ANN_ROLLOUT_BAKE: "30s"}, "refreshbus.io/rollout-bake is set without refreshbus.io/rollout"),
    ],
)
def test_contradictory_or_bad_annotations_are_refused(annotations: dict[str, str], message: str) -> None:
    decision = decide(make_pod(annotations), NS, CONFIG)
    assert not decision.allowed
    assert message in decision.message


def test_a_valid_rollout_is_admitted() -> None:
    injected(make_pod({pods.ANN_ROLLOUT: "1,25%,100%", pods.ANN_ROLLOUT_BAKE: "1m30s"}))


def test_signal_without_uid_under_run_as_non_root_is_refused() -> None:
    pod = make_pod(
        {pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx"}, securityContext={"runAsNonRoot": True}
    )
    decision = decide(pod, NS, CONFIG)
    assert not decision.allowed
    assert "requires runAsNonRoot" in decision.message
    assert "set securityContext.runAsUser" in decision.message


def test_signal_without_uid_in_restricted_namespace_is_refused() -> None:
    ns = Namespace("apps", {"pod-security.kubernetes.io/enforce": "restricted"})
    decision = decide(make_pod({pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx"}), ns, CONFIG)
    assert not decision.allowed
    assert 'enforces Pod Security "restricted"' in decision.message


def test_signal_with_shared_process_namespace_disabled_is_refused() -> None:
    pod = make_pod({pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx"}, shareProcessNamespace=False)
    decision = decide(pod, NS, CONFIG)
    assert not decision.allowed
    assert "shareProcessNamespace: false" in decision.message


# -- the sidecar --------------------------------------------------------------------------


def test_native_sidecar_comes_first_with_probes_resources_and_identity() -> None:
    pod = make_pod()
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "busybox"}]
    out = injected(pod)
    init = out["spec"]["initContainers"]
    assert [c["name"] for c in init] == [pods.SIDECAR_CONTAINER, "migrate"]
    s = sidecar(out)
    assert s["restartPolicy"] == "Always"
    assert s["image"] == "example/sidecar:1"
    assert s["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert s["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert s["ports"][0]["containerPort"] == pods.DEFAULT_HEALTH_PORT
    assert s["resources"] == {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
    e = env(s)
    assert e[pods.ENV_NAMESPACE] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
    assert e[pods.ENV_POD_NAME] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert e[pods.ENV_POD_UID] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}
    assert e[pods.ENV_WORKLOAD_KIND] == "Pod"
    assert e[pods.ENV_WORKLOAD_NAME] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert e[pods.ENV_CONFIGMAPS] == "app-config"
    assert pods.ENV_SECRETS not in e
    assert e[pods.ENV_TARGET_DIR] == pods.DEFAULT_TARGET_DIR
    assert e[pods.ENV_ACTION] == "none"
    assert e[pods.ENV_BROKER_URLS_FILE] == "/etc/refreshbus/broker/urls"
    assert pods.ENV_BROKER_URLS not in e  # never the URLs themselves
    assert out["metadata"]["annotations"][pods.ANN_INJECTED] == "true"
    assert out["metadata"]["annotations"][pods.ANN_SIDECAR_PROTOCOL] == "1.3"
    assert "shareProcessNamespace" not in out["spec"]
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert {SHARED_VOLUME, BROKER_VOLUME, TOKEN_VOLUME} <= set(names)
    broker = next(v for v in out["spec"]["volumes"] if v["name"] == BROKER_VOLUME)
    assert broker["secret"]["secretName"] == "refreshbus-broker"
    shared = next(v for v in out["spec"]["volumes"] if v["name"] == SHARED_VOLUME)
    assert shared == {"name": SHARED_VOLUME, "emptyDir": {"medium": "Memory"}}


def test_resources_are_configurable() -> None:
    config = InjectionConfig(cpu_request="5m", memory_request="20Mi", memory_limit="40Mi", cpu_limit="100m")
    s = sidecar(injected(make_pod(), config=config))
    assert s["resources"] == {
        "requests": {"cpu": "5m", "memory": "20Mi"},
        "limits": {"memory": "40Mi", "cpu": "100m"},
    }


@pytest.mark.parametrize(
    ("owner", "labels", "expected"),
    [
        (None, {}, ("Pod", None)),
        (
            {"kind": "ReplicaSet", "name": "web-7d9f8b6c5d"},
            {"pod-template-hash": "7d9f8b6c5d"},
            ("Deployment", "web"),
        ),
        (
            {"kind": "ReplicaSet", "name": "my-app-v2-5f4d"},
            {"pod-template-hash": "5f4d"},
            ("Deployment", "my-app-v2"),
        ),
        ({"kind": "ReplicaSet", "name": "bare-rs"}, {}, ("ReplicaSet", "bare-rs")),
        ({"kind": "StatefulSet", "name": "db"}, {}, ("StatefulSet", "db")),
        ({"kind": "DaemonSet", "name": "agent"}, {}, ("DaemonSet", "agent")),
        ({"kind": "Job", "name": "batch"}, {}, ("Pod", None)),
    ],
)
def test_workload_from_owner_references(
    owner: dict[str, Any] | None, labels: dict[str, str], expected: tuple[str, str | None]
) -> None:
    pod = make_pod()
    pod["metadata"]["labels"] = labels
    if owner:
        pod["metadata"]["ownerReferences"] = [
            {**owner, "apiVersion": "apps/v1", "uid": "u", "controller": True}
        ]
    assert workload_of(pod) == expected


def test_deployment_identity_lands_in_env() -> None:
    pod = make_pod({pods.ANN_APP: "orders"})
    pod["metadata"]["labels"] = {"pod-template-hash": "abc12"}
    pod["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "orders-api-abc12",
            "uid": "u",
            "controller": True,
        }
    ]
    e = env(sidecar(injected(pod)))
    assert e[pods.ENV_WORKLOAD_KIND] == "Deployment"
    assert e[pods.ENV_WORKLOAD_NAME] == "orders-api"
    assert e[pods.ENV_APP] == "orders"


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (
            {pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx: master"},
            {pods.ENV_ACTION: "signal", pods.ENV_SIGNAL: "SIGHUP", pods.ENV_PROCESS: "nginx: master"},
        ),
        (
            {pods.ANN_SIGNAL: "hup", pods.ANN_PROCESS: "nginx"},
            {pods.ENV_ACTION: "signal", pods.ENV_SIGNAL: "SIGHUP"},
        ),
        (
            {pods.ANN_RELOAD_URL: "http://127.0.0.1:8080/-/reload"},
            {pods.ENV_ACTION: "http", pods.ENV_RELOAD_URL: "http://127.0.0.1:8080/-/reload"},
        ),
        (
            {
                pods.ANN_RELOAD_URL: "http://127.0.0.1:8080/r",
                pods.ANN_RELOAD_METHOD: "put",
                pods.ANN_HEALTH_URL: "http://127.0.0.1:8080/healthz",
            },
            {
                pods.ENV_ACTION: "http",
                pods.ENV_RELOAD_METHOD: "PUT",
                pods.ENV_HEALTH_URL: "http://127.0.0.1:8080/healthz",
            },
        ),
        (
            {pods.ANN_SECRETS: "db-creds, api-key", pods.ANN_CONFIGMAPS: None},
            {pods.ENV_SECRETS: "db-creds,api-key", pods.ENV_ACTION: "none"},
        ),
    ],
)
def test_reload_action_env(annotations: dict[str, str], expected: dict[str, str]) -> None:
    e = env(sidecar(injected(make_pod(annotations))))
    for key, value in expected.items():
        assert e[key] == value
    if pods.ENV_CONFIGMAPS not in expected and annotations.get(pods.ANN_CONFIGMAPS, "x") is None:
        assert pods.ENV_CONFIGMAPS not in e


# -- security context ---------------------------------------------------------------------

SIGNAL = {pods.ANN_SIGNAL: "SIGHUP", pods.ANN_PROCESS: "nginx"}


def test_signal_shares_process_namespace_and_the_app_uid() -> None:
    pod = make_pod(SIGNAL, securityContext={"runAsUser": 101, "runAsGroup": 102})
    out = injected(pod)
    assert out["spec"]["shareProcessNamespace"] is True
    sc = sidecar(out)["securityContext"]
    assert sc["runAsUser"] == 101
    assert sc["runAsGroup"] == 102
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True


def test_container_level_uid_wins_over_pod_level() -> None:
    pod = make_pod(SIGNAL, securityContext={"runAsUser": 1})
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1000}
    assert sidecar(injected(pod))["securityContext"]["runAsUser"] == 1000


def test_signal_to_unknown_uid_uses_root_with_only_cap_kill() -> None:
    decision = decide(make_pod(SIGNAL), NS, CONFIG)
    out = apply_patch(make_pod(SIGNAL), decision.patch)
    sc = sidecar(out)["securityContext"]
    assert sc["runAsUser"] == 0
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["KILL"]}
    assert any("CAP_KILL" in w for w in decision.warnings)


def test_signal_to_mixed_uids_uses_cap_kill() -> None:
    pod = make_pod(SIGNAL)
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1000}
    pod["spec"]["containers"].append({"name": "other", "image": "x", "securityContext": {"runAsUser": 2000}})
    decision = decide(pod, NS, CONFIG)
    assert any("different users" in w for w in decision.warnings)
    assert sidecar(apply_patch(pod, decision.patch))["securityContext"]["capabilities"]["add"] == ["KILL"]


def test_no_signal_runs_as_nonroot_default_and_opens_secret_files_to_the_app() -> None:
    s = sidecar(injected(make_pod({pods.ANN_SECRETS: "creds"})))
    assert s["securityContext"]["runAsUser"] == CONFIG.default_uid
    assert s["securityContext"]["runAsNonRoot"] is True
    assert "add" not in s["securityContext"]["capabilities"]
    assert env(s)[pods.ENV_SECRET_MODE] == "0444"


def test_same_uid_keeps_secret_files_private() -> None:
    s = sidecar(injected(make_pod({pods.ANN_SECRETS: "creds"}, securityContext={"runAsUser": 1000})))
    assert pods.ENV_SECRET_MODE not in env(s)


def test_host_pid_pods_do_not_get_share_process_namespace() -> None:
    out = injected(make_pod(SIGNAL, hostPID=True, securityContext={"runAsUser": 5}))
    assert "shareProcessNamespace" not in out["spec"]


# -- unmodified paths ---------------------------------------------------------------------


def mounts(pod: dict[str, Any], container: str = "app") -> list[dict[str, Any]]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == container)["volumeMounts"]


def test_whole_directory_configmap_mount_is_replaced_at_the_same_path() -> None:
    out = injected(make_pod())
    assert mounts(out) == [
        {"name": SHARED_VOLUME, "mountPath": "/etc/app", "subPath": "configmap-app-config", "readOnly": True}
    ]
    assert "config" not in [v["name"] for v in out["spec"]["volumes"]]  # unused now: dropped


@pytest.mark.parametrize(
    ("volume", "subdir"),
    [
        ({"secret": {"secretName": "creds", "defaultMode": 0o400}}, "secret-creds"),
        ({"projected": {"sources": [{"secret": {"name": "creds"}}]}}, "secret-creds"),
        ({"projected": {"sources": [{"configMap": {"name": "app-config"}}]}}, "configmap-app-config"),
    ],
)
def test_secret_and_projected_mounts_are_replaced(volume: dict[str, Any], subdir: str) -> None:
    pod = make_pod({pods.ANN_SECRETS: "creds"})
    pod["spec"]["volumes"] = [{"name": "config", **volume}]
    out = injected(pod)
    assert mounts(out)[0] == {
        "name": SHARED_VOLUME,
        "mountPath": "/etc/app",
        "subPath": subdir,
        "readOnly": True,
    }


def test_unmanaged_volumes_are_left_alone() -> None:
    pod = make_pod()
    pod["spec"]["volumes"].append({"name": "other", "configMap": {"name": "not-managed"}})
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "other", "mountPath": "/etc/other"})
    out = injected(pod)
    assert {"name": "other", "mountPath": "/etc/other"} in mounts(out)
    assert {"name": "other", "configMap": {"name": "not-managed"}} in out["spec"]["volumes"]


def test_subpath_file_mount_gets_the_sidecars_in_place_copy_of_the_key() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "config", "mountPath": "/etc/app/app.yaml", "subPath": "app.yaml"},
        {"name": "config", "mountPath": "/etc/app/other.yaml", "subPath": "other.yaml"},
    ]
    decision = decide(pod, NS, CONFIG)
    out = apply_patch(pod, decision.patch)
    assert mounts(out) == [
        {
            "name": SHARED_VOLUME,
            "mountPath": "/etc/app/app.yaml",
            "subPath": ".inplace/configmap-app-config/app.yaml",
            "readOnly": True,
        },
        {
            "name": SHARED_VOLUME,
            "mountPath": "/etc/app/other.yaml",
            "subPath": ".inplace/configmap-app-config/other.yaml",
            "readOnly": True,
        },
    ]
    assert "config" not in [v["name"] for v in out["spec"]["volumes"]]  # nobody uses it any more
    env = {e["name"]: e.get("value") for e in sidecar(out)["env"]}
    assert env[pods.ENV_INPLACE_FILES] == "configmap-app-config/app.yaml,configmap-app-config/other.yaml"
    assert not any("subPath" in w for w in decision.warnings)


def test_without_subpath_file_mounts_the_sidecar_keeps_no_in_place_files() -> None:
    env = {e["name"]: e.get("value") for e in sidecar(injected(make_pod()))["env"]}
    assert pods.ENV_INPLACE_FILES not in env


@pytest.mark.parametrize(
    "mount",
    [
        {"name": "config", "mountPath": "/etc/app/app.yaml", "subPathExpr": "$(POD_NAME).yaml"},
        {"name": "config", "mountPath": "/etc/app/data", "subPath": "..data"},
    ],
)
def test_other_subpath_mounts_are_kept_and_the_refreshed_dir_mounted_beside_them(
    mount: dict[str, Any],
) -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [dict(mount)]
    decision = decide(pod, NS, CONFIG)
    out = apply_patch(pod, decision.patch)
    assert mounts(out) == [
        mount,
        {
            "name": SHARED_VOLUME,
            "mountPath": "/refreshbus/configmap-app-config",
            "subPath": "configmap-app-config",
            "readOnly": True,
        },
    ]
    assert "config" in [v["name"] for v in out["spec"]["volumes"]]
    assert any("cannot be kept up to date" in w for w in decision.warnings)


def test_items_and_multi_source_projected_volumes_stay_with_a_warning() -> None:
    pod = make_pod({pods.ANN_SECRETS: "creds"})
    pod["spec"]["volumes"] = [
        {"name": "config", "configMap": {"name": "app-config", "items": [{"key": "a", "path": "b"}]}},
        {
            "name": "both",
            "projected": {"sources": [{"configMap": {"name": "app-config"}}, {"secret": {"name": "creds"}}]},
        },
    ]
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "both", "mountPath": "/etc/both"})
    original = copy.deepcopy(pod["spec"]["containers"][0]["volumeMounts"])
    decision = decide(pod, NS, CONFIG)
    out = apply_patch(pod, decision.patch)
    assert mounts(out) == original
    text = " ".join(decision.warnings)
    assert "remaps keys with items" in text
    assert "combines several sources" in text


def test_init_container_mounts_are_replaced_too() -> None:
    pod = make_pod()
    pod["spec"]["initContainers"] = [
        {"name": "check", "image": "x", "volumeMounts": [{"name": "config", "mountPath": "/cfg"}]}
    ]
    out = injected(pod)
    check = out["spec"]["initContainers"][1]
    assert check["volumeMounts"][0]["name"] == SHARED_VOLUME
    assert check["volumeMounts"][0]["subPath"] == "configmap-app-config"


def test_sources_to_check_are_reported() -> None:
    decision = decide(make_pod({pods.ANN_SECRETS: "creds"}), NS, CONFIG)
    assert decision.sources == (("ConfigMap", "app-config"), ("Secret", "creds"))


def test_patch_is_plain_add_operations() -> None:
    decision: Decision = decide(make_pod(), NS, CONFIG)
    assert {op["op"] for op in decision.patch} == {"add"}
    assert {op["path"] for op in decision.patch} == {
        "/metadata/annotations",
        "/spec/volumes",
        "/spec/initContainers",
        "/spec/containers",
    }


def test_parse_options_normalises() -> None:
    options = parse_options({pods.ANN_CONFIGMAPS: "a,b,a", pods.ANN_SIGNAL: "usr1", pods.ANN_PROCESS: "x"})
    assert not isinstance(options, str)
    assert options.configmaps == ("a", "b")
    assert options.signal == "SIGUSR1"


def test_namespace_opt_in_mode() -> None:
    config = InjectionConfig(namespace_opt_in=True)
    skipped = decide(make_pod(), NS, config)
    assert skipped.allowed
    assert skipped.patch == []
    assert "is not labelled refreshbus.io/injection=enabled" in skipped.message
    assert decide(make_pod(), Namespace("apps", {"refreshbus.io/injection": "enabled"}), config).injected


def test_rendered_webhook_configuration_selects_namespaces() -> None:
    from refreshbus_operator.injection.webhook import webhook_configuration

    hook = webhook_configuration(CONFIG)["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["clientConfig"]["service"]["path"] == "/mutate-pods"
    exprs = hook["namespaceSelector"]["matchExpressions"]
    assert exprs[0] == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-node-lease", "kube-public", "kube-system", "refreshbus-system"],
    }
    assert exprs[1] == {"key": "refreshbus.io/injection", "operator": "NotIn", "values": ["disabled"]}
    opt_in = webhook_configuration(InjectionConfig(namespace_opt_in=True, failure_policy="Fail"))["webhooks"][
        0
    ]
    assert opt_in["namespaceSelector"]["matchExpressions"][1] == {
        "key": "refreshbus.io/injection",
        "operator": "In",
        "values": ["enabled"],
    }
    assert opt_in["failurePolicy"] == "Fail"
