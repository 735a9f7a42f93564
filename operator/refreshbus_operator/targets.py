"""Resolve ``spec.target`` into the pods a refresh is sent to.

Four ways to say "who": a workload (its own ``spec.selector``), a label selector, pod
names, or a Spring Cloud Bus destination pattern over instance ids ``<app>:<pod>``. Only
pods that are **running** and **opted in** (a container named ``refreshbus-sidecar`` is
in the pod) become targets; every other matching pod is reported as skipped with a
reason and is never waited for.

Routing: when every target is a pod of exactly the targeted workload (no pod of it is
skipped and each sidecar binds that workload's key), one message under the workload key
reaches them all; otherwise one message per pod under its pod key. Either way only the
targets receive the event: the filtering happens at the broker.

``<app>`` (documented in docs/configrefresh.md): the pod annotation ``refreshbus.io/app``,
else label ``app.kubernetes.io/name``, else label ``app``, else the owning workload's
name, else the pod name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from refreshbus_wire import contract
from refreshbus_wire import pods as podc
from refreshbus_wire.destination import app_name, instance_id, matches
from refreshbus_wire.routing import pod_key, workload_key

from refreshbus_operator.kube import ApiError, Kube, pods_path, workload_path

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
#: Pods per LIST page when resolving targets.
LIST_PAGE = 1000


class TargetError(Exception):
    """The target cannot be resolved at all (``reason`` is a condition reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Pod:
    """What target resolution needs to know about one pod."""

    name: str
    labels: Mapping[str, str]
    phase: str
    terminating: bool
    has_sidecar: bool
    opted_in: bool
    #: (kind, name) of the owning workload, as the pod's sidecar binds it when known.
    workload: tuple[str, str] | None
    #: True when the sidecar's environment states its workload (so its binding is certain).
    workload_declared: bool
    configmaps: frozenset[str]
    secrets: frozenset[str]
    app: str
    #: metadata.uid: what the pod's identity token is bound to.
    uid: str = ""
    #: The wire protocol its sidecar speaks, as stamped by the injector (None: injected
    #: before protocol 1.3, or not by refreshbus): a rollout needs one that follows the
    #: release record.
    sidecar_protocol: str | None = None

    @property
    def instance(self) -> str:
        return instance_id(self.app, self.name)

    def skip_reason(self) -> str | None:
        if not self.has_sidecar:
            return "no refreshbus sidecar (not opted in)"
        if self.terminating:
            return "terminating"
        if self.phase != "Running":
            return f"not running (phase {self.phase or 'unknown'})"
        return None


@dataclass(frozen=True, slots=True)
class Resolution:
    targets: tuple[Pod, ...]
    skipped: tuple[tuple[str, str], ...]
    routing_keys: tuple[str, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.targets)


# -- pure: pods ------------------------------------------------------------------------


def _sidecar(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    spec = obj.get("spec") or {}
    for key in ("initContainers", "containers"):  # native sidecars are init containers
        for container in spec.get(key) or ():
            if container.get("name") == podc.SIDECAR_CONTAINER:
                return dict(container)
    return None


def _env(container: Mapping[str, Any] | None) -> dict[str, str]:
    if container is None:
        return {}
    return {e["name"]: e["value"] for e in container.get("env") or () if "name" in e and "value" in e}


def owner_workload(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """The workload owning a pod, from its ownerReferences (ReplicaSet -> Deployment)."""
    labels = meta.get("labels") or {}
    for ref in meta.get("ownerReferences") or ():
        kind, name = ref.get("kind"), ref.get("name")
        if not name:
            continue
        if kind in ("StatefulSet", "DaemonSet"):
            return (kind, name)
        if kind == "ReplicaSet":
            suffix = labels.get("pod-template-hash")
            if suffix and name.endswith("-" + suffix):
                return ("Deployment", name[: -len(suffix) - 1])
            return ("ReplicaSet", name)
    return None


def pod_from_json(obj: Mapping[str, Any]) -> Pod:
    meta = obj.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    sidecar = _sidecar(obj)
    env = _env(sidecar)
    declared = bool(env.get(podc.ENV_WORKLOAD_KIND) and env.get(podc.ENV_WORKLOAD_NAME))
    workload = (
        (env[podc.ENV_WORKLOAD_KIND], env[podc.ENV_WORKLOAD_NAME]) if declared else owner_workload(meta)
    )
    name = str(meta.get("name", ""))
    app = app_name(labels, workload[1] if workload else None, name, annotations)
    configmaps = set(podc.split_names(annotations.get(podc.ANN_CONFIGMAPS)))
    configmaps |= set(podc.split_names(env.get(podc.ENV_CONFIGMAPS)))
    secrets = set(podc.split_names(annotations.get(podc.ANN_SECRETS)))
    secrets |= set(podc.split_names(env.get(podc.ENV_SECRETS)))
    return Pod(
        name=name,
        labels=labels,
        phase=str((obj.get("status") or {}).get("phase") or ""),
        terminating=meta.get("deletionTimestamp") is not None,
        has_sidecar=sidecar is not None,
        opted_in=sidecar is not None or contract.asks_for_injection(annotations, labels),
        workload=workload,
        workload_declared=declared,
        configmaps=frozenset(configmaps),
        secrets=frozenset(secrets),
        app=app,
        uid=str(meta.get("uid") or ""),
        sidecar_protocol=annotations.get(podc.ANN_SIDECAR_PROTOCOL),
    )


# -- pure: label selectors -------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics (all terms must hold)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_query(selector: Mapping[str, Any]) -> str:
    """The ``labelSelector`` query string for a metav1.LabelSelector."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], sorted(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


# -- pure: resolution ------------------------------------------------------------------


def resolve(
    namespace: str,
    target: Mapping[str, Any],
    pods: Iterable[Pod],
    workload_selector: Mapping[str, Any] | None = None,
) -> Resolution:
    """Pick targets and skipped pods among ``pods`` (the namespace's, or a pre-filtered
    list) for one ``spec.target``; choose routing keys."""
    pods = list(pods)
    matched: list[Pod]
    missing: list[str] = []
    workload: tuple[str, str] | None = None
    if "workload" in target:
        if workload_selector is None:
            raise TargetError("WorkloadNotFound", "the workload has no selector")
        workload = (target["workload"]["kind"], target["workload"]["name"])
        matched = [p for p in pods if selector_matches(workload_selector, p.labels)]
    elif "selector" in target:
        matched = [p for p in pods if selector_matches(target["selector"], p.labels)]
    elif "pods" in target:
        by_name = {p.name: p for p in pods}
        matched = [by_name[n] for n in target["pods"] if n in by_name]
        missing = [n for n in target["pods"] if n not in by_name]
    elif "destination" in target:
        destination = target["destination"]
        matched = [p for p in pods if p.opted_in and matches(destination, p.instance)]
    else:
        raise TargetError("InvalidTarget", "target sets none of workload, selector, pods or destination")

    targets = tuple(sorted((p for p in matched if p.skip_reason() is None), key=lambda p: p.name))
    skipped = [(p.name, p.skip_reason() or "") for p in matched if p.skip_reason() is not None]
    skipped += [(n, "pod not found") for n in missing]
    skipped.sort()
    return Resolution(
        targets=targets,
        skipped=tuple(skipped),
        routing_keys=routing_keys(namespace, targets, bool(skipped), workload),
    )


def routing_keys(
    namespace: str, targets: Sequence[Pod], any_skipped: bool, workload: tuple[str, str] | None
) -> tuple[str, ...]:
    """The most compact set of routing keys that reaches exactly the targets."""
    if not targets:
        return ()
    if (
        workload is not None
        and not any_skipped
        and all(p.workload_declared and p.workload == workload for p in targets)
    ):
        return (workload_key(namespace, workload[0], workload[1]),)
    return tuple(pod_key(namespace, p.name) for p in targets)


def unmanaged_sources(sources: Sequence[tuple[str, str]], targets: Sequence[Pod]) -> list[str]:
    """Messages for each (kind, name) source that some target does not manage."""
    problems = []
    for kind, name in sources:
        missing = [
            p.name for p in targets if name not in (p.configmaps if kind == "ConfigMap" else p.secrets)
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            problems.append(f"{kind} {name!r} is not managed by pod(s) {shown}")
    return problems


# -- API ---------------------------------------------------------------------------------


async def fetch_and_resolve(kube: Kube, namespace: str, target: Mapping[str, Any]) -> Resolution:
    """List the relevant pods (server-side label filtering where possible) and resolve."""
    selector: Mapping[str, Any] | None = None
    query: dict[str, Any] = {}
    if "workload" in target:
        kind, name = target["workload"]["kind"], target["workload"]["name"]
        try:
            obj = await kube.aget(workload_path(namespace, kind, name))
        except ApiError as exc:
            if exc.not_found:
                raise TargetError("WorkloadNotFound", f"{kind} {name!r} not found in {namespace}") from None
            raise
        selector = (obj.get("spec") or {}).get("selector")
        if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
            raise TargetError("WorkloadNotFound", f"{kind} {name!r} has no pod selector")
        query["labelSelector"] = selector_query(selector)
    elif "selector" in target:
        query["labelSelector"] = selector_query(target["selector"])
    return resolve(namespace, target, await list_pods(kube, namespace, query), selector)


async def list_pods(kube: Kube, namespace: str, query: Mapping[str, Any]) -> list[Pod]:
    """The namespace's pods matching ``query``, in pages of :data:`LIST_PAGE`: each page is
    reduced to :class:`Pod` before the next is read, so thousands of full pod objects
    (tens of MB of JSON) are never in memory at once."""
    pods: list[Pod] = []
    page_query = {**query, "limit": LIST_PAGE}
    while True:
        try:
            page = await kube.aget(pods_path(namespace), **page_query)
        except ApiError as exc:
            if exc.status != 410 or "continue" not in page_query:
                raise
            # The continue token expired (pages read too slowly): list again from the start.
            pods, page_query = [], {**query, "limit": LIST_PAGE}
            continue
        pods.extend(pod_from_json(i) for i in page.get("items") or ())
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return pods
        page_query["continue"] = token
