"""The sidecar's securityContext: the app's UID when known, else the least it needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refreshbus_wire import pods
from refreshbus_wire.contract import PodOptions

from refreshbus_operator.injection.config import InjectionConfig

#: Pod Security Admission label naming the enforced level.
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


@dataclass(frozen=True, slots=True)
class Namespace:
    """What the decision needs to know about the pod's namespace."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def _uid_of(container: Mapping[str, Any], pod_sc: Mapping[str, Any], key: str) -> int | None:
    value = (container.get("securityContext") or {}).get(key)
    return value if value is not None else pod_sc.get(key)


def security(
    pod: Mapping[str, Any], options: PodOptions, namespace: Namespace, config: InjectionConfig
) -> tuple[dict[str, Any], bool, list[str]] | str:
    """(sidecar securityContext, shares the app's UID, warnings) or a rejection message."""
    spec = pod.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    containers = spec.get("containers") or []
    uids = {_uid_of(c, pod_sc, "runAsUser") for c in containers}
    gids = {_uid_of(c, pod_sc, "runAsGroup") for c in containers}
    sc: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if len(uids) == 1 and None not in uids:
        uid = next(iter(uids))
        assert uid is not None
        sc["runAsUser"] = uid
        if len(gids) == 1 and None not in gids:
            sc["runAsGroup"] = next(iter(gids))
        if uid != 0:
            sc["runAsNonRoot"] = True
        return sc, True, []
    if options.action != "signal":
        sc["runAsUser"] = config.default_uid
        sc["runAsNonRoot"] = True
        return sc, False, []
    # Signalling a process of unknown (or several) UIDs: root with CAP_KILL and nothing else.
    why = (
        "the app containers run as different users"
        if len(uids - {None}) > 1
        else "the app's user is not set (no securityContext.runAsUser)"
    )
    fix = (
        "set securityContext.runAsUser on the app container (or the pod) so the sidecar can run "
        "as the same user, or use refreshbus.io/reload-url instead of a signal"
    )
    if pod_sc.get("runAsNonRoot") or any(
        (c.get("securityContext") or {}).get("runAsNonRoot") for c in containers
    ):
        return (
            f"{pods.ANN_SIGNAL}: to signal the app the sidecar needs the app's UID or CAP_KILL as "
            f"root; {why} and the pod requires runAsNonRoot, which forbids the root+CAP_KILL "
            f"fallback: {fix}"
        )
    level = (namespace.labels or {}).get(PSA_ENFORCE)
    if level == "restricted":
        return (
            f"{pods.ANN_SIGNAL}: to signal the app the sidecar needs the app's UID or CAP_KILL; "
            f'{why} and namespace {namespace.name} enforces Pod Security "restricted", which '
            f"forbids adding CAP_KILL: {fix}"
        )
    sc["runAsUser"] = 0
    sc["runAsNonRoot"] = False
    sc["capabilities"] = {"drop": ["ALL"], "add": ["KILL"]}
    return (
        sc,
        False,
        [
            f"refreshbus: {why}; the sidecar runs as root with only CAP_KILL to signal it "
            "(set runAsUser to run it as the app's user instead)"
        ],
    )
