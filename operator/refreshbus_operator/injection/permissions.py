"""The API permissions the injection side of the operator uses, and nothing more.

The Helm chart's operator ClusterRole must include these rules (tests/integration/rbac
runs the injection handlers as a ServiceAccount holding exactly these, so a missing
or superfluous need shows up there first).
"""

from __future__ import annotations

from typing import Any, Final

from refreshbus_operator.injection.config import InjectionConfig


def cluster_rules(config: InjectionConfig | None = None) -> list[dict[str, Any]]:
    config = config or InjectionConfig()
    return [
        # Webhook: the pod's namespace labels (opt-out, Pod Security level); kopf itself
        # lists/watches namespaces and CRDs (resource discovery, namespace patterns).
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
        # Webhook: do the named ConfigMaps/Secrets exist (metadata-only GET)? Holding `get`
        # is also what allows the operator to grant `get` in the sidecar Roles (RBAC
        # forbids granting what one does not hold). create/update/delete: the release
        # records of versioned workloads (refreshbus_operator.release), ConfigMaps of their
        # own; names vary per workload, so they cannot be limited by name.
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update", "delete"]},
        # + create: the broker Secret copied into each opted-in namespace, and the webhook's
        # TLS Secret in the operator's namespace (create cannot be limited by name) ...
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
        # ... and updating exactly those two names.
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["update"],
            "resourceNames": [config.broker_secret, config.tls_secret],
        },
        # Sidecar RBAC follows the opted-in workloads.
        {
            "apiGroups": ["apps"],
            "resources": ["deployments", "statefulsets", "daemonsets"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["roles", "rolebindings"],
            "verbs": ["get", "list", "create", "update", "delete"],
        },
        # caBundle patching of the one webhook configuration.
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "verbs": ["get", "patch"],
            "resourceNames": [config.webhook_configuration],
        },
        # Pods that asked for the sidecar and run without it are reported (kopf watches pods).
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        # kopf posts Kubernetes Events for handler outcomes (and we, InjectionSkipped on pods).
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ]


#: Resources the sidecar Roles may grant (for reviewers of the chart's ClusterRole).
SIDECAR_GRANTS: Final = ("configmaps:get", "secrets:get")
