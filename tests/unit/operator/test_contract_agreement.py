"""Every reader of the pod contract agrees with the injection webhook, on every input.

Admission (injection.mutation.decide), auto-refresh (autorefresh.opted_in), target
resolution (targets.pod_from_json), the sidecar-RBAC reconciler (sidecar_rbac.opted_in)
and the sidecar's settings (refreshbus_sidecar.config.load, fed what admission injected)
all read one parser, refreshbus_wire.contract; this checks that they agree.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from refreshbus_operator import autorefresh, sidecar_rbac, targets
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.mutation import apply_patch, decide
from refreshbus_operator.injection.options import wants_injection
from refreshbus_operator.injection.security import Namespace
from refreshbus_sidecar.config import load
from refreshbus_wire import pods

CONFIG = InjectionConfig(sidecar_image="example/sidecar:1", operator_namespace="refreshbus-system")
NS = Namespace("apps")

BOOLEANS = [None, "", "true", "TRUE", " True ", "false", "FALSE", "yes", "no", "1", "0", "on", "sometimes"]


def values(*choices: str | None) -> st.SearchStrategy[str | None]:
    return st.sampled_from(choices)


ANNOTATIONS = st.fixed_dictionaries(
    {
        pods.ANN_INJECT: st.sampled_from(BOOLEANS),
        pods.ANN_AUTO_REFRESH: st.sampled_from(BOOLEANS),
        pods.ANN_CONFIGMAPS: values(None, "", "web-config", "web-config, other", "Bad_Name", " , "),
        pods.ANN_SECRETS: values(None, "db", "x/y"),
        pods.ANN_SIGNAL: values(None, "HUP", "sigusr1", "SIGFOO"),
        pods.ANN_PROCESS: values(None, "nginx", "(("),
        pods.ANN_RELOAD_URL: values(None, "http://127.0.0.1:8080/-/reload", "ftp://x/r", "http://x:99999/"),
        pods.ANN_RELOAD_METHOD: values(None, "put", "DELETE"),
        pods.ANN_HEALTH_URL: values(None, "http://127.0.0.1:8080/healthz", "localhost:1"),
        pods.ANN_APP: values(None, "orders"),
        pods.ANN_ROLLOUT: values(None, "1,25%,100%", "1,25%"),
        pods.ANN_ROLLOUT_BAKE: values(None, "30s", "30"),
    }
).map(lambda a: {k: v for k, v in a.items() if v is not None})
LABELS = st.sampled_from([{}, *({pods.ANN_INJECT: v} for v in ("true", "yes", "false"))])


def pod(annotations: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-1", "annotations": annotations, "labels": labels},
        "spec": {
            # A known user: the security rules never refuse, so only the annotations decide.
            "securityContext": {"runAsUser": 101},
            "containers": [{"name": "app", "image": "nginx",
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}],
            "volumes": [{"name": "config", "configMap": {"name": "web-config"}}],
        },
        "status": {"phase": "Running"},
    }


def workload(annotations: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "apps", "uid": "u1"},
        "spec": {"template": {"metadata": {"annotations": annotations, "labels": labels}}},
    }


def sidecar_env(patched: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet would give the injected sidecar."""
    container = next(c for c in patched["spec"]["initContainers"] if c["name"] == pods.SIDECAR_CONTAINER)
    downward = {"metadata.namespace": "apps", "metadata.name": "web-1", "metadata.uid": "uid-1"}
    env = {
        e["name"]: e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container["env"]
    }
    env.pop(pods.ENV_BROKER_URLS_FILE)
    env[pods.ENV_BROKER_URLS] = "amqp://sidecar:pw@rabbit:5672/%2F"
    return env


@settings(max_examples=600, deadline=None)
@given(annotations=ANNOTATIONS, labels=LABELS)
def test_admission_auto_refresh_targeting_rbac_and_the_sidecar_agree(
    annotations: dict[str, str], labels: dict[str, str]
) -> None:
    the_pod, the_workload = pod(annotations, labels), workload(annotations, labels)
    decision = decide(the_pod, NS, CONFIG)
    asked = wants_injection(the_pod)
    inject = (annotations.get(pods.ANN_INJECT) or "").strip() or labels.get(pods.ANN_INJECT, "")
    auto = (annotations.get(pods.ANN_AUTO_REFRESH) or "").strip().lower()

    # The documented rule: a boolean is true or false in any case; nothing else.
    assert asked == (inject.strip().lower() != "false" and inject != "")
    assert decision.injected == (decision.allowed and asked)
    if inject.strip().lower() not in {"true", "false", ""}:
        assert not decision.allowed
        assert f"{inject!r} is not \"true\" or \"false\"" in decision.message
    if auto not in {"true", "false", ""} and asked:
        assert not decision.allowed

    # Targeting and RBAC see a pod as opted in exactly when the webhook acts on it.
    assert targets.pod_from_json(the_pod).opted_in == asked
    assert sidecar_rbac.opted_in(the_workload) == asked

    # Auto-refresh tracks a workload that asks for injection exactly when its pods are
    # injected and their auto-refresh says true.
    tracked = autorefresh.opted_in(the_workload)
    if inject.strip().lower() == "true":
        assert (tracked is not None) == (decision.injected and auto == "true")
    if tracked is not None:
        assert auto == "true"
        assert (annotations.get(pods.ANN_INJECT) or "").strip().lower() in {"true", "false", ""}

    # Whatever admission injects, the sidecar accepts, with the same sources.
    if decision.injected:
        settings_ = load(sidecar_env(apply_patch(the_pod, decision.patch)))
        assert settings_.sources == decision.sources
