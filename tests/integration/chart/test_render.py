"""The chart as rendered by the real ``helm`` (lint + template), for every value set in
charts/refreshbus/ci/. No API server here: test_dry_run.py sends the same manifests to one.

Besides the chart's own rules (labels, selectors, security, RBAC), these tests pin the
contract with the code the chart configures: the operator's arguments must parse with the
real ``refreshbus-operator`` parser, and every ``REFRESHBUS_INJECTION_*`` variable must be a
field of the injector's config.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "refreshbus"
VALUE_SETS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "refreshbus-system"
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

Manifest = dict[str, Any]


def kinds(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, suffix: str = "") -> Manifest:
    found = [m for m in kinds(manifests, kind) if m["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}: {[m['metadata']['name'] for m in found]}"
    return found[0]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}]


def operator_container(manifests: list[Manifest]) -> dict[str, Any]:
    deploy = one(manifests, "Deployment", "-operator")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def selectors(m: Manifest) -> list[dict[str, str]]:
    """Every label selector in an object (workloads, Services, PDBs, ServiceMonitors, affinity)."""
    out: list[dict[str, str]] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                service_selector = k == "selector" and m["kind"] == "Service"
                if isinstance(v, dict) and (k == "matchLabels" or service_selector):
                    out.append(v)
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)

    walk(m.get("spec", {}))
    return out


# -- lint and schema ----------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm: Path, value_set: str) -> None:
    proc = subprocess.run(
        [
            str(helm),
            "lint",
            "--strict",
            str(CHART),
            "-f",
            str(CHART / "ci" / f"{value_set}-values.yaml"),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "1.34.4",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("operator.replicas=two", "at '/operator/replicas': got string, want integer"),
        ("webhook.failurePolicy=Maybe", "at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'"),
        ("operator.replicaz=2", "additional properties 'replicaz' not allowed"),
        ("webhook.timeoutSeconds=31", "at '/webhook/timeoutSeconds'"),
        ("sidecar.image.pullPolicy=Sometimes", "at '/sidecar/image/pullPolicy'"),
        ("operator.ackQueueType=mirrored", "at '/operator/ackQueueType'"),
        ("rabbitmq.replicas=0", "at '/rabbitmq/replicas'"),
    ],
)
def test_schema_rejects_bad_values_with_helms_error(helm: Path, flag: str, message: str) -> None:
    setter = "--set-string" if flag.endswith("two") else "--set"
    proc = subprocess.run(
        [str(helm), "template", "rb", str(CHART), setter, flag], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr


def test_kubernetes_older_than_native_sidecars_is_refused(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "template", "rb", str(CHART), "--kube-version", "1.28.9"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "requires kubeVersion: >=1.29.0-0 which is incompatible with Kubernetes v1.28.9" in proc.stderr


def test_more_than_one_unpeered_replica_is_refused(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "template", "rb", str(CHART), "--set", "operator.peering.enabled=false"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "operator.replicas > 1 needs operator.peering.enabled" in proc.stderr


# -- every object --------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_standard_labels_everywhere_and_never_the_chart_in_a_selector(render: Any, value_set: str) -> None:
    manifests = render(value_set, include_crds=False)
    assert manifests
    for m in manifests:
        labels = m["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{m['kind']}/{m['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "rb"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        for selector in selectors(m):
            assert "helm.sh/chart" not in selector, f"{m['kind']}/{m['metadata']['name']}: {selector}"
            assert "app.kubernetes.io/version" not in selector, f"{m['kind']}/{m['metadata']['name']}"
        for w in [m] if m["kind"] in {"Deployment", "StatefulSet"} else []:
            template_labels = w["spec"]["template"]["metadata"]["labels"]
            match = w["spec"]["selector"]["matchLabels"]
            assert match.items() <= template_labels.items()


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_runs_non_root_with_a_read_only_root(render: Any, value_set: str) -> None:
    manifests = render(value_set)
    assert workloads(manifests)
    for w in workloads(manifests):
        spec = w["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, w["metadata"]["name"]
        assert pod_sc.get("runAsUser", 0) > 0
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            where = f"{w['metadata']['name']}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert not sc.get("privileged", False), where
            # Read-only root: /tmp must be a volume.
            assert any(vm["mountPath"] == "/tmp" for vm in c["volumeMounts"]), where
            assert not c["image"].endswith(":latest"), c["image"]
            assert ":" in c["image"].rsplit("/", 1)[-1], f"untagged image {c['image']}"


# -- RBAC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_rbac_is_least_privilege(render: Any, value_set: str) -> None:
    manifests = render(value_set)
    role = one(manifests, "ClusterRole", "-operator")
    for rule in role["rules"]:
        for field in ("verbs", "resources", "apiGroups"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        if "secrets" in rule["resources"]:
            assert not {"list", "watch", "deletecollection"} & set(rule["verbs"]), rule
            if {"update", "patch", "delete"} & set(rule["verbs"]):
                assert rule.get("resourceNames"), f"Secret writes must be limited by name: {rule}"
        if "mutatingwebhookconfigurations" in rule["resources"]:
            mwc = one(manifests, "MutatingWebhookConfiguration")
            assert rule["resourceNames"] == [mwc["metadata"]["name"]]
            assert set(rule["verbs"]) <= {"get", "patch"}
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert any("get" in r["verbs"] for r in secrets)
    binding = one(manifests, "ClusterRoleBinding", "-operator")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    sa = one(manifests, "ServiceAccount", "-operator")
    assert (subject["name"], subject["namespace"]) == (sa["metadata"]["name"], NAMESPACE)
    deploy = one(manifests, "Deployment", "-operator")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_rbac_follows_features(render: Any) -> None:
    def verbs(manifests: list[Manifest], resource: str) -> set[str]:
        role = one(manifests, "ClusterRole", "-operator")
        return {v for r in role["rules"] if resource in r["resources"] for v in r["verbs"]}

    default, no_crds, cert_manager = render("default"), render("no-crds"), render("cert-manager")
    records = {"create", "update", "delete"}  # release records of versioned workloads, always
    assert verbs(default, "configmaps") == {"get", "list", "watch"} | records
    assert verbs(no_crds, "configmaps") == {"get"} | records  # auto-refresh off: no ConfigMap watch
    assert "create" not in verbs(no_crds, "configrefreshes")
    # The Spring bus bridge creates (and garbage-collects) ConfigRefreshes too.
    bridge_only = render("no-crds", "--set", "operator.springBus.enabled=true",
                         "--set", "operator.springBus.namespaces={shop}")
    assert {"create", "delete"} <= verbs(bridge_only, "configrefreshes")
    assert verbs(default, "clusterkopfpeerings") == {"get", "list", "watch", "patch"}
    assert not verbs(no_crds, "clusterkopfpeerings")
    assert not verbs(no_crds, "kopfpeerings")
    assert verbs(default, "mutatingwebhookconfigurations") == {"get", "patch"}
    assert not verbs(cert_manager, "mutatingwebhookconfigurations")  # cert-manager injects the CA
    assert verbs(render("servicemonitor"), "kopfpeerings") == {"get", "list", "watch", "patch"}
    # Secrets: never list/watch, unless auto-refresh on Secrets is asked for explicitly.
    assert verbs(default, "secrets") == {"get", "create", "update"}
    opted = render("default", "--set", "operator.autoRefresh.secrets=true")
    assert verbs(opted, "secrets") == {"get", "create", "update", "list", "watch"}
    off = render("no-crds", "--set", "operator.autoRefresh.secrets=true")  # auto-refresh off
    assert not {"list", "watch"} & verbs(off, "secrets")
    # ... and the operator watches Secrets exactly when the chart grants it: its config agrees.
    from refreshbus_operator import settings

    for manifests in (default, opted):
        env = {
            k: v
            for k, v in env_of(operator_container(manifests)).items()
            if k.startswith(settings.ENV_PREFIX) and isinstance(v, str)
        }
        granted = {"list", "watch"} <= verbs(manifests, "secrets")
        assert settings.from_env(env).auto_refresh_secrets is granted


# -- webhook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_webhook_excludes_system_and_release_namespaces(render: Any, value_set: str) -> None:
    values = yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text()) or {}
    manifests = render(value_set, namespace="refreshbus-prod")
    mwc = one(manifests, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    exprs = hook["namespaceSelector"]["matchExpressions"]
    by_key = {e["key"]: e for e in exprs}
    names = by_key["kubernetes.io/metadata.name"]
    assert names["operator"] == "NotIn"
    assert {"kube-system", "refreshbus-prod"} <= set(names["values"])
    label = by_key["refreshbus.io/injection"]
    if values.get("webhook", {}).get("namespaceOptIn"):
        assert (label["operator"], label["values"]) == ("In", ["enabled"])
    else:
        assert (label["operator"], label["values"]) == ("NotIn", ["disabled"])
    assert hook["failurePolicy"] == values.get("webhook", {}).get("failurePolicy", "Ignore")
    assert hook["sideEffects"] == "None"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert 1 <= hook["timeoutSeconds"] <= 30
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    service = hook["clientConfig"]["service"]
    assert "url" not in hook["clientConfig"]
    assert "caBundle" not in hook["clientConfig"]
    svc = one(manifests, "Service", "-webhook")
    assert (service["name"], service["namespace"], service["port"]) == (
        svc["metadata"]["name"],
        "refreshbus-prod",
        svc["spec"]["ports"][0]["port"],
    )
    # The Service reaches the operator's webhook port.
    container = operator_container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in ports
    pod_labels = one(manifests, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    # The injector excludes the same namespaces the API server does not send.
    env = env_of(container)
    assert set(env["REFRESHBUS_INJECTION_EXCLUDED_NAMESPACES"].split(",")) == set(names["values"])
    assert env["REFRESHBUS_INJECTION_FAILURE_POLICY"] == hook["failurePolicy"]
    assert env["REFRESHBUS_INJECTION_SERVICE_NAME"] == svc["metadata"]["name"]
    assert env["REFRESHBUS_INJECTION_WEBHOOK_PORT"] == str(ports["webhook"])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_webhook_matches_the_injectors_own_configuration(render: Any, value_set: str) -> None:
    """The injector renders its configuration too (for tests and docs); the chart's must say
    the same for the settings the chart passes it."""
    from refreshbus_operator.injection import config as injection_config
    from refreshbus_operator.injection.webhook import webhook_configuration

    manifests = render(value_set)
    env = env_of(operator_container(manifests))
    literal = {
        k: v for k, v in env.items() if k.startswith(injection_config.ENV_PREFIX) and isinstance(v, str)
    }
    cfg = injection_config.from_env(literal, operator_namespace=NAMESPACE)
    (theirs,) = webhook_configuration(cfg, service_namespace=NAMESPACE)["webhooks"]
    (ours,) = one(manifests, "MutatingWebhookConfiguration")["webhooks"]
    for key in ("name", "admissionReviewVersions", "rules", "failurePolicy", "sideEffects", "matchPolicy"):
        assert ours[key] == theirs[key], key
    assert ours["clientConfig"]["service"]["path"] == theirs["clientConfig"]["service"]["path"]
    assert ours["clientConfig"]["service"]["port"] == theirs["clientConfig"]["service"]["port"]
    ours_exprs = {e["key"]: e for e in ours["namespaceSelector"]["matchExpressions"]}
    for expr in theirs["namespaceSelector"]["matchExpressions"]:
        assert ours_exprs[expr["key"]]["operator"] == expr["operator"]
        assert sorted(ours_exprs[expr["key"]]["values"]) == sorted(expr["values"])


def test_self_managed_tls(render: Any) -> None:
    manifests = render("default")
    assert not kinds(manifests, "Certificate")
    assert not kinds(manifests, "Issuer")
    mwc = one(manifests, "MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in mwc["metadata"].get("annotations", {})
    env = env_of(operator_container(manifests))
    assert env["REFRESHBUS_INJECTION_WEBHOOK_CONFIGURATION"] == mwc["metadata"]["name"]
    assert env["REFRESHBUS_INJECTION_MANAGE_TLS"] == "true"
    assert env["REFRESHBUS_INJECTION_CERT_DIR"].startswith("/tmp/")  # the writable emptyDir


@pytest.mark.parametrize("value_set", ["cert-manager", "failurepolicy-fail"])
def test_cert_manager_tls(render: Any, value_set: str) -> None:
    manifests = render(value_set)
    cert = one(manifests, "Certificate", "-webhook")
    mwc = one(manifests, "MutatingWebhookConfiguration")
    annotation = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{NAMESPACE}/{cert['metadata']['name']}"
    svc = one(manifests, "Service", "-webhook")["metadata"]["name"]
    assert f"{svc}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    issuers = {i["metadata"]["name"]: i for i in kinds(manifests, "Issuer")}
    if value_set == "cert-manager":
        # A CA chain: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate,
        # so a renewal of the serving certificate keeps the CA (and the injected caBundle).
        ca_issuer = issuers[cert["spec"]["issuerRef"]["name"]]
        assert cert["spec"]["issuerRef"]["kind"] == "Issuer"
        assert "selfSigned" not in ca_issuer["spec"]
        ca_cert = one(manifests, "Certificate", "-webhook-ca")
        assert ca_issuer["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
        assert ca_cert["spec"]["isCA"] is True
        assert ca_cert["spec"]["privateKey"]["rotationPolicy"] == "Never"  # renewed CA, same key
        assert ca_cert["spec"]["secretName"] != cert["spec"]["secretName"]
        root = issuers[ca_cert["spec"]["issuerRef"]["name"]]
        assert ca_cert["spec"]["issuerRef"]["kind"] == "Issuer"
        assert root["spec"] == {"selfSigned": {}}
        assert len(issuers) == 2
        assert len(kinds(manifests, "Certificate")) == 2
        assert all(i["metadata"]["namespace"] == NAMESPACE for i in issuers.values())
    else:
        assert not issuers
        assert len(kinds(manifests, "Certificate")) == 1
        assert cert["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "company-ca"}
    container = operator_container(manifests)
    env = env_of(container)
    assert env["REFRESHBUS_INJECTION_MANAGE_TLS"] == "false"
    assert "REFRESHBUS_INJECTION_WEBHOOK_CONFIGURATION" not in env
    mount = next(vm for vm in container["volumeMounts"] if vm["name"] == "webhook-tls")
    assert mount["mountPath"] == env["REFRESHBUS_INJECTION_CERT_DIR"]
    assert mount["readOnly"] is True
    volumes = one(manifests, "Deployment", "-operator")["spec"]["template"]["spec"]["volumes"]
    tls = next(v for v in volumes if v["name"] == "webhook-tls")
    assert tls["secret"]["secretName"] == cert["spec"]["secretName"] == env["REFRESHBUS_INJECTION_TLS_SECRET"]


# -- operator --------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_arguments_parse_with_the_real_cli(render: Any, value_set: str) -> None:
    from refreshbus_operator.__main__ import parser

    container = operator_container(render(value_set))
    assert "command" not in container  # the image's ENTRYPOINT is refreshbus-operator
    args = parser().parse_args(container["args"])
    probe_port = container["livenessProbe"]["httpGet"]["port"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.liveness_endpoint == f"http://0.0.0.0:{ports[probe_port]}/healthz"
    if "metrics" in ports:
        assert args.metrics_port == ports["metrics"]
    else:
        assert args.metrics_port == 0


def test_peering_objects_match_the_operator(render: Any) -> None:
    from refreshbus_operator.__main__ import parser

    manifests = render("default")
    deploy = one(manifests, "Deployment", "-operator")
    assert deploy["spec"]["replicas"] == 2
    args = parser().parse_args(operator_container(manifests)["args"])
    assert args.priority is None  # each replica derives its own from its pod name: they differ
    pod_name = env_of(operator_container(manifests))["REFRESHBUS_OPERATOR_POD_NAME"]
    assert pod_name == {"fieldRef": {"fieldPath": "metadata.name"}}  # Downward API
    assert not args.standalone
    (peering,) = kinds(manifests, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == args.peering_name
    assert args.all_namespaces
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]

    namespaced = render("servicemonitor")
    args = parser().parse_args(operator_container(namespaced)["args"])
    assert args.namespaces == ["team-a"]
    (peering,) = kinds(namespaced, "KopfPeering")
    assert (peering["metadata"]["namespace"], peering["metadata"]["name"]) == ("team-a", args.peering_name)
    assert not kinds(namespaced, "ClusterKopfPeering")

    single = render("no-crds")
    args = parser().parse_args(operator_container(single)["args"])
    assert args.standalone
    assert args.peering_name is None
    assert args.auto_refresh is False
    assert one(single, "Deployment", "-operator")["spec"]["strategy"]["type"] == "Recreate"
    assert not kinds(single, "PodDisruptionBudget")
    assert not kinds(single, "KopfPeering")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_injection_settings_are_fields_of_the_injector_config(render: Any, value_set: str) -> None:
    from refreshbus_operator.injection import config as injection_config

    known = {f.name for f in dataclasses.fields(injection_config.InjectionConfig)}
    env = env_of(operator_container(render(value_set)))
    names = [n for n in env if n.startswith(injection_config.ENV_PREFIX)]
    assert names
    unknown = [n for n in names if n.removeprefix(injection_config.ENV_PREFIX).lower() not in known]
    assert not unknown, f"the injector does not read {unknown}"
    # ... and the literal ones parse into a valid config.
    literal = {k: v for k, v in env.items() if k in names and isinstance(v, str)}
    cfg = injection_config.from_env(literal)
    assert cfg.enabled is True
    assert cfg.manage_tls is (value_set not in {"cert-manager", "failurepolicy-fail"})
    assert cfg.sidecar_image == "ghcr.io/refreshbus/sidecar:0.1.0"
    assert (cfg.cpu_request, cfg.memory_request, cfg.memory_limit) == ("10m", "32Mi", "64Mi")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_settings_are_fields_of_the_operator_config(render: Any, value_set: str) -> None:
    from refreshbus_operator import settings

    env = env_of(operator_container(render(value_set)))
    names = [n.removeprefix(settings.ENV_PREFIX).lower() for n in env if n.startswith(settings.ENV_PREFIX)]
    unknown = [n for n in names if n not in settings._FIELDS]
    assert not unknown, f"refreshbus_operator.settings does not read {unknown}"
    assert set(env) & {settings.ENV_BROKER_URLS, settings.ENV_BROKER_URLS_FILE}


def test_operator_reads_its_broker_urls_from_the_mounted_secret(render: Any) -> None:
    for value_set in VALUE_SETS:
        manifests = render(value_set)
        container = operator_container(manifests)
        env = env_of(container)
        path = Path(env["REFRESHBUS_BROKER_URLS_FILE"])
        mount = next(vm for vm in container["volumeMounts"] if vm["name"] == "broker")
        assert str(path.parent) == mount["mountPath"]
        volumes = one(manifests, "Deployment", "-operator")["spec"]["template"]["spec"]["volumes"]
        broker = next(v for v in volumes if v["name"] == "broker")["secret"]
        assert [i["path"] for i in broker["items"]] == [path.name]
        if value_set == "existing-broker-secret":
            assert broker["secretName"] == "my-rabbitmq-urls"
            assert broker["items"][0]["key"] == "operator-urls"
            assert env["REFRESHBUS_INJECTION_BROKER_SECRET"] == "my-rabbitmq-sidecar-urls"
            assert env["REFRESHBUS_INJECTION_BROKER_SECRET_KEY"] == "sidecar-urls"


# -- broker ----------------------------------------------------------------------------------


def decode(secret: Manifest, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_embedded_broker_users_urls_and_definitions_agree(render: Any) -> None:
    manifests = render("default")
    users = one(manifests, "Secret", "-rabbitmq-users")
    definitions = json.loads(decode(one(manifests, "Secret", "-rabbitmq-definitions"), "definitions.json"))
    passwords = {u["name"]: u["password"] for u in definitions["users"]}
    assert passwords == {
        "refreshbus-operator": decode(users, "operator-password"),
        "refreshbus-sidecar": decode(users, "sidecar-password"),
    }
    assert all(len(p) == 32 for p in passwords.values())
    assert len(set(passwords.values())) == 2
    svc = one(manifests, "Service", "-rabbitmq")
    host = f"{svc['metadata']['name']}.{NAMESPACE}.svc:5672"
    for user, secret in (("operator", "-broker-operator"), ("sidecar", "-broker-sidecar")):
        url = decode(one(manifests, "Secret", secret), "urls")
        assert url == f"amqp://refreshbus-{user}:{passwords[f'refreshbus-{user}']}@{host}/%2F"
    env = env_of(operator_container(manifests))
    sidecar_secret = one(manifests, "Secret", "-broker-sidecar")
    assert env["REFRESHBUS_INJECTION_BROKER_SECRET"] == sidecar_secret["metadata"]["name"]
    assert env["REFRESHBUS_INJECTION_BROKER_SECRET_KEY"] == "urls"
    # No user may touch anything beyond the refreshbus names; nobody is an administrator.
    assert all(u["tags"] == "" for u in definitions["users"])
    assert all(".*" not in p[k] for p in definitions["permissions"] for k in ("configure", "write", "read"))


def test_embedded_broker_statefulset(render: Any) -> None:
    manifests = render("servicemonitor")
    sts = one(manifests, "StatefulSet", "-rabbitmq")
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert {vm["mountPath"] for vm in container["volumeMounts"]} >= {"/var/lib/rabbitmq", "/tmp"}
    assert sts["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    default_claim = one(render("default"), "StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert "storageClassName" not in default_claim["spec"]
    ephemeral = one(render("no-crds"), "StatefulSet")
    assert "volumeClaimTemplates" not in ephemeral["spec"]
    volumes = ephemeral["spec"]["template"]["spec"]["volumes"]
    assert any(v["name"] == "data" and "emptyDir" in v for v in volumes)


def test_embedded_broker_cluster(render: Any) -> None:
    """replicas: 3 -- peer discovery lists every pod's DNS name under the node names the pods
    take, nodes share a cookie, clients get every node's URL, the ack queue is quorum and every
    node adds itself to it."""
    manifests = render("rabbitmq-cluster")
    sts = one(manifests, "StatefulSet", "-rabbitmq")
    assert sts["spec"]["replicas"] == 3
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    rabbit, headless = sts["metadata"]["name"], sts["spec"]["serviceName"]
    node_name = env_of(container)["RABBITMQ_NODENAME"]
    conf = one(manifests, "ConfigMap", "-rabbitmq-config")["data"]["rabbitmq.conf"]
    listed = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", conf, re.M)
    assert listed == [node_name.replace("$(POD_NAME)", f"{rabbit}-{i}") for i in range(3)]
    assert f".{headless}.{NAMESPACE}.svc." in listed[0]
    assert one(manifests, "Service", "-headless")["spec"]["publishNotReadyAddresses"] is True
    (init,) = pod["initContainers"]
    cookie = one(manifests, "Secret", "-erlang-cookie")
    assert len(decode(cookie, "cookie")) == 48
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["erlang-cookie"]["secret"]["secretName"] == cookie["metadata"]["name"]
    assert "/var/lib/rabbitmq/.erlang.cookie" in " ".join(init["command"])
    assert "rabbitmq-queues grow" in " ".join(container["lifecycle"]["postStart"]["exec"]["command"])
    for secret in ("-broker-operator", "-broker-sidecar"):
        urls = decode(one(manifests, "Secret", secret), "urls").split(",")
        assert [u.split("@")[1] for u in urls] == [
            f"{rabbit}-{i}.{headless}.{NAMESPACE}.svc:5672/%2F" for i in range(3)
        ]
    definitions = json.loads(decode(one(manifests, "Secret", "-rabbitmq-definitions"), "definitions.json"))
    (queue,) = definitions["queues"]
    assert queue["name"] == "refreshbus.operator.acks.quorum"
    assert queue["arguments"] == {"x-queue-type": "quorum"}
    assert definitions["bindings"][0]["destination"] == queue["name"]
    assert one(manifests, "PodDisruptionBudget", "-rabbitmq")["spec"]["maxUnavailable"] == 1
    assert env_of(operator_container(manifests))["REFRESHBUS_OPERATOR_ACK_QUEUE_TYPE"] == "quorum"
    # A single node (the default) has none of it.
    single = render("default")
    assert "cluster_formation" not in one(single, "ConfigMap", "-rabbitmq-config")["data"]["rabbitmq.conf"]
    assert "initContainers" not in one(single, "StatefulSet")["spec"]["template"]["spec"]
    assert not [m for m in single if m["metadata"]["name"].endswith("-erlang-cookie")]


def test_classic_ack_queue_type_reaches_the_definitions_and_the_operator(render: Any) -> None:
    manifests = render("default", "--set", "operator.ackQueueType=classic")
    definitions = json.loads(decode(one(manifests, "Secret", "-rabbitmq-definitions"), "definitions.json"))
    (queue,) = definitions["queues"]
    assert (queue["name"], queue["arguments"]) == ("refreshbus.operator.acks", {})
    assert env_of(operator_container(manifests))["REFRESHBUS_OPERATOR_ACK_QUEUE_TYPE"] == "classic"


def test_spring_bus_value_turns_the_bridge_on_with_its_broker_permissions(render: Any, helm: Path) -> None:
    from refreshbus_operator import settings

    def operator_permissions(manifests: list[Manifest]) -> re.Pattern[str]:
        secret = one(manifests, "Secret", "-rabbitmq-definitions")
        definitions = json.loads(decode(secret, "definitions.json"))
        (mine,) = [p for p in definitions["permissions"] if p["user"] == "refreshbus-operator"]
        assert mine["configure"] == mine["write"] == mine["read"]
        return re.compile(mine["configure"])

    off = render("default")
    assert "REFRESHBUS_OPERATOR_SPRING_BUS" not in env_of(operator_container(off))
    assert not operator_permissions(off).match("springCloudBus")
    on = render("default", "--set", "operator.springBus.enabled=true",
                "--set", "operator.springBus.namespaces={shop,web}")
    env = {k: v for k, v in env_of(operator_container(on)).items() if k.startswith(settings.ENV_PREFIX)}
    config = settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert (config.spring_bus, config.spring_bus_namespaces) == (True, ("shop", "web"))
    allowed = operator_permissions(on)
    for name in ("springCloudBus", "springCloudBus.refreshbus.4fe0c4ac", "refreshbus"):
        assert allowed.match(name), name
    assert not allowed.match("springCloudBus.anonymous.zBkOjgl_S4Kt9I7UyZDuhg")  # Spring's own queues
    out = subprocess.run(
        [str(helm), "template", "rb", str(CHART), "--set", "operator.springBus.enabled=true"],
        capture_output=True, text=True, check=False,
    )
    assert out.returncode != 0
    assert "operator.springBus.namespaces must name at least one namespace" in out.stderr


def test_existing_secret_means_no_embedded_broker(render: Any) -> None:
    manifests = render("existing-broker-secret")
    assert not kinds(manifests, "StatefulSet")
    assert not [m for m in manifests if "rabbitmq" in m["metadata"]["name"]]
    assert not kinds(manifests, "Secret")  # the user's Secrets are used as they are
    assert kinds(render("default"), "StatefulSet")


def test_explicit_passwords_are_used(render: Any) -> None:
    manifests = render("default", "--set", "rabbitmq.users.sidecar.password=s3cr3t-Pw")
    users = one(manifests, "Secret", "-rabbitmq-users")
    assert decode(users, "sidecar-password") == "s3cr3t-Pw"
    assert ":s3cr3t-Pw@" in decode(one(manifests, "Secret", "-broker-sidecar"), "urls")


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_service_and_service_monitor(render: Any) -> None:
    manifests = render("servicemonitor")
    svc = one(manifests, "Service", "-metrics")
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    pod_labels = one(manifests, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert not kinds(render("default"), "ServiceMonitor")
    no_metrics = render("no-crds")
    assert not [m for m in kinds(no_metrics, "Service") if m["metadata"]["name"].endswith("-metrics")]


# -- CRDs ------------------------------------------------------------------------------------


def test_crd_is_templated_identical_to_crds_folder_and_kept(render: Any) -> None:
    source = yaml.safe_load((REPO / "crds" / "configrefreshes.refreshbus.io.yaml").read_text())
    (crd,) = kinds(render("default"), "CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    unkept = kinds(render("default", "--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept[0]["metadata"]
    assert not kinds(render("no-crds"), "CustomResourceDefinition")


def test_peering_crds_come_from_helms_crds_folder(render: Any) -> None:
    with_crds = render("default", include_crds=True)
    names = {m["metadata"]["name"] for m in kinds(with_crds, "CustomResourceDefinition")}
    assert names == {"configrefreshes.refreshbus.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_one_existing_secret_for_operator_and_sidecars_is_refused(helm: Path) -> None:
    # The operator copies the sidecars' Secret whole into every opted-in namespace.
    proc = subprocess.run(
        [str(helm), "template", "rb", str(CHART), "--set", "broker.existingSecret=both-urls"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "broker.existingSecret needs broker.existingSidecarSecret" in proc.stderr


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str | None) -> bool:
    """Does any rule grant ``verb`` on ``group/resource`` (object ``name``, if any)?"""
    for rule in rules:
        if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
            continue
        limited = rule.get("resourceNames")
        if not limited or (name is not None and name in limited):
            return True
    return False


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_cluster_role_covers_what_the_injector_uses(render: Any, value_set: str) -> None:
    """refreshbus_operator.injection.permissions lists the injector's API needs (its own
    integration tests run the injector with exactly those); the chart must grant each."""
    from refreshbus_operator.injection import config as injection_config
    from refreshbus_operator.injection.permissions import cluster_rules

    manifests = render(value_set)
    env = env_of(operator_container(manifests))
    literal = {
        k: v for k, v in env.items() if k.startswith(injection_config.ENV_PREFIX) and isinstance(v, str)
    }
    cfg = injection_config.from_env(literal)
    chart_rules = one(manifests, "ClusterRole", "-operator")["rules"]
    # With cert-manager the injector must leave the TLS Secret and the caBundle alone
    # (REFRESHBUS_INJECTION_MANAGE_TLS=false).
    manage_certs = cfg.manage_tls
    missing = []
    for rule in cluster_rules(cfg):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    names = rule.get("resourceNames") or [None]
                    if resource == "secrets" and verb == "update":
                        # Updated by name only: the sidecars' broker Secret copies, the TLS Secret.
                        names = [cfg.broker_secret] + ([cfg.tls_secret] if manage_certs else [])
                    if resource == "mutatingwebhookconfigurations" and not manage_certs:
                        continue  # cert-manager injects the caBundle
                    missing += [
                        (group, resource, verb, name)
                        for name in names
                        if not allows(chart_rules, group, resource, verb, name)
                    ]
    assert not missing, f"the chart's ClusterRole lacks {missing}"


def test_long_release_names_still_give_valid_object_names(render: Any) -> None:
    manifests = render("default", "--set", f"fullnameOverride={'x' * 63}")
    for m in manifests:
        name = m["metadata"]["name"]
        if m["kind"] != "CustomResourceDefinition":
            assert len(name) <= 63, name
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        if m["kind"] == "StatefulSet":
            assert len(name) <= 52, f"{name}: controller-revision-hash label would exceed 63"
            for claim in m["spec"].get("volumeClaimTemplates", []):
                assert len(f"{claim['metadata']['name']}-{name}-99") <= 63
        for value in m["metadata"].get("labels", {}).values():
            assert len(str(value)) <= 63
