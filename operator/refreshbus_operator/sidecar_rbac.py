"""Least-privilege API access for injected sidecars, one Role per opted-in workload.

For a Deployment/StatefulSet/DaemonSet whose pod template says
``refreshbus.io/inject: "true"``, the operator keeps, in the workload's namespace:

* Role ``refreshbus-sidecar-<kind>-<name>``: ``get`` on exactly the ConfigMaps and
  Secrets the template's ``refreshbus.io/configmaps`` / ``refreshbus.io/secrets`` name
  (``resourceNames``; no list, no watch -- the sidecar only GETs by name), and on the
  workload's release record (``refreshbus-release-<kind>-<name>``), which every sidecar
  reads: a 404 means the workload is not versioned, a 403 would be an error;
* RoleBinding of the same name, binding it to the pod template's ServiceAccount
  (``serviceAccountName``, else ``default``): the sidecar uses the pod's own token.

Both carry an ownerReference to the workload (the garbage collector removes them if the
operator is down when the workload goes) and are deleted by the operator when the
workload goes or stops opting in. They follow annotation changes.

Design note: the pod's ServiceAccount is kept (changing it would change the app's own
API rights). Workloads sharing one ServiceAccount therefore share each other's grants;
give each workload its own ServiceAccount for full isolation (docs/injection.md).

The broker Secret for sidecars is copied from the operator's namespace into each
namespace with an opted-in workload (a pod can only mount Secrets of its own namespace).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from refreshbus_wire import contract
from refreshbus_wire.release import record_name

from refreshbus_operator.kube import ApiError, Kube, q

log = logging.getLogger("refreshbus.sidecar_rbac")

RBAC = "/apis/rbac.authorization.k8s.io/v1"
PREFIX = "refreshbus-sidecar-"
MANAGED_BY = {
    "app.kubernetes.io/managed-by": "refreshbus-operator",
    "app.kubernetes.io/component": "sidecar-rbac",
}
LABEL_KIND = "refreshbus.io/workload-kind"
LABEL_NAME = "refreshbus.io/workload-name"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


def object_name(kind: str, name: str) -> str:
    """``refreshbus-sidecar-<kind>-<name>``, shortened with a hash when over 253 chars."""
    full = f"{PREFIX}{kind.lower()}-{name}"
    if len(full) <= 253:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[:242]}-{digest}"


def label_value(value: str) -> str:
    if len(value) <= 63:
        return value
    return value[:52] + "-" + hashlib.sha256(value.encode()).hexdigest()[:10]


def _template(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((workload.get("spec") or {}).get("template")) or {}


def owner_reference(workload: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference to the workload: the garbage collector deletes what carries it with
    the workload, also when the operator is down then. Never blocking the workload's deletion."""
    return {
        "apiVersion": workload.get("apiVersion", "apps/v1"),
        "kind": workload["kind"],
        "name": workload["metadata"]["name"],
        "uid": workload["metadata"]["uid"],
        "blockOwnerDeletion": False,
    }


def opted_in(workload: Mapping[str, Any]) -> bool:
    """The pod template asks for the sidecar, as the injection webhook reads it."""
    meta = _template(workload).get("metadata") or {}
    return contract.asks_for_injection(meta.get("annotations") or {}, meta.get("labels") or {})


def desired(workload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(Role, RoleBinding) the workload's sidecars need, or None if it does not opt in
    (or its template is one the webhook refuses)."""
    if not opted_in(workload):
        return None
    meta = workload["metadata"]
    kind, name, namespace = workload["kind"], meta["name"], meta["namespace"]
    template = _template(workload)
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    try:
        options = contract.parse_annotations(annotations)
    except contract.ContractError:
        return None  # the webhook refuses such pods: they never run, nor need a Role
    configmaps, secrets = (*options.configmaps, record_name(kind, name)), options.secrets
    rules = [
        {"apiGroups": [""], "resources": [resource], "verbs": ["get"], "resourceNames": list(names)}
        for resource, names in (("configmaps", configmaps), ("secrets", secrets))
        if names
    ]
    sa = (template.get("spec") or {}).get("serviceAccountName") or "default"
    role_name = object_name(kind, name)
    metadata = {
        "name": role_name,
        "namespace": namespace,
        "labels": {**MANAGED_BY, LABEL_KIND: kind, LABEL_NAME: label_value(name)},
        "ownerReferences": [owner_reference(workload)],
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata,
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": dict(metadata),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    }
    return role, binding


def _path(namespace: str, plural: str, name: str | None = None) -> str:
    base = f"{RBAC}/namespaces/{q(namespace)}/{plural}"
    return f"{base}/{q(name)}" if name else base


async def _put(kube: Kube, plural: str, body: dict[str, Any], compare: tuple[str, ...]) -> bool:
    """Create or update; True if anything was written."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        current = await kube.aget(_path(namespace, plural, name))
    except ApiError as exc:
        if not exc.not_found:
            raise
        await kube.apost(_path(namespace, plural), body)
        return True
    if all(current.get(key) == body.get(key) for key in compare) and all(
        (current["metadata"].get("labels") or {}).get(k) == v for k, v in body["metadata"]["labels"].items()
    ):
        return False
    if plural == "rolebindings" and current.get("roleRef") != body.get("roleRef"):
        await kube.adelete(_path(namespace, plural, name))  # roleRef is immutable
        await kube.apost(_path(namespace, plural), body)
        return True
    updated = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    await kube.aput(_path(namespace, plural, name), updated)
    return True


async def reconcile(kube: Kube, workload: Mapping[str, Any]) -> str:
    """Make the sidecar Role/RoleBinding of one workload match its pod template.
    Returns what happened: "applied", "unchanged" or "removed"/"absent"."""
    meta = workload["metadata"]
    wanted = desired(workload)
    if wanted is None:
        removed = await cleanup(kube, meta["namespace"], workload["kind"], meta["name"])
        return "removed" if removed else "absent"
    role, binding = wanted
    changed = await _put(kube, "roles", role, ("rules",))
    changed = await _put(kube, "rolebindings", binding, ("roleRef", "subjects")) or changed
    if changed:
        log.info(
            "sidecar RBAC for %s %s/%s: %s",
            workload["kind"],
            meta["namespace"],
            meta["name"],
            "; ".join(f"{r['resources'][0]}={','.join(r['resourceNames'])}" for r in role["rules"]),
        )
    return "applied" if changed else "unchanged"


async def cleanup(kube: Kube, namespace: str, kind: str, name: str) -> bool:
    """Delete the workload's sidecar Role and RoleBinding; True if anything was there."""
    found = False
    for plural in ("rolebindings", "roles"):
        try:
            await kube.adelete(_path(namespace, plural, object_name(kind, name)))
            found = True
        except ApiError as exc:
            if not exc.not_found:
                raise
    if found:
        log.info("removed sidecar RBAC for %s %s/%s", kind, namespace, name)
    return found


async def ensure_broker_secret(
    kube: Kube, namespace: str, source_namespace: str, name: str, key: str = "urls"
) -> str:
    """Copy the sidecars' broker URLs -- only ``key`` of the Secret ``name``, the one key the
    injected sidecar mounts -- into ``namespace``: "written", "unchanged", or "missing" (no
    source or no such key yet: logged, not raised -- the chart may not have created it).

    Only that key travels: the source may be a user's Secret that also holds other
    credentials (e.g. the operator's own broker URLs), which must not land in every app
    namespace. A copy with other keys (an older operator copied them all) is rewritten."""
    if namespace == source_namespace:
        return "unchanged"
    path = f"/api/v1/namespaces/{q(source_namespace)}/secrets/{q(name)}"
    try:
        source = await kube.aget(path)
    except ApiError as exc:
        if exc.not_found:
            log.warning(
                "broker Secret %s/%s not found; sidecars in %s cannot connect yet",
                source_namespace,
                name,
                namespace,
            )
            return "missing"
        raise
    value = (source.get("data") or {}).get(key)
    if value is None:
        log.warning(
            "broker Secret %s/%s has no key %r; sidecars in %s cannot connect yet",
            source_namespace,
            name,
            key,
            namespace,
        )
        return "missing"
    data = {key: value}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "data": data,
    }
    target = f"/api/v1/namespaces/{q(namespace)}/secrets/{q(name)}"
    try:
        current = await kube.aget(target)
    except ApiError as exc:
        if not exc.not_found:
            raise
        await kube.apost(f"/api/v1/namespaces/{q(namespace)}/secrets", body)
        return "written"
    if (current.get("data") or {}) == data:
        return "unchanged"
    metadata = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
    await kube.aput(target, {**body, "metadata": metadata})
    return "written"


class Reconciler:
    """Workload events in, API calls only when something changed.

    Deployments are updated often (status, scale) while their pod template rarely changes:
    the last applied (Role, RoleBinding) per workload is remembered, so a repeated or
    status-only event costs no API request. Which sidecar Roles already exist is listed
    once per namespace (by label), so the first sight of a workload that does not opt in
    costs nothing either -- yet a Role left from before an operator restart is found and
    removed (level-triggered).
    """

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._applied: dict[tuple[str, str, str], Any] = {}
        self._existing: dict[str, set[str]] = {}
        self._broker_ensured: set[str] = set()
        #: kopf handles workloads concurrently: the first events of one namespace wait for
        #: its one listing instead of each listing it.
        self._listing = asyncio.Lock()

    def broker_needed(self, namespace: str) -> bool:
        """Whether the broker Secret copy in ``namespace`` was not yet ensured in this run."""
        return namespace not in self._broker_ensured

    def broker_done(self, namespace: str) -> None:
        self._broker_ensured.add(namespace)

    async def _exists(self, namespace: str, role: str) -> bool:
        async with self._listing:
            if namespace not in self._existing:
                listed = await self.kube.aget(
                    _path(namespace, "roles"), labelSelector="app.kubernetes.io/component=sidecar-rbac"
                )
                self._existing[namespace] = {i["metadata"]["name"] for i in listed.get("items") or []}
        return role in self._existing[namespace]

    def _note(self, namespace: str, role: str, present: bool) -> None:
        names = self._existing.setdefault(namespace, set())
        (names.add if present else names.discard)(role)

    async def handle(self, event_type: str | None, workload: Mapping[str, Any]) -> str:
        meta = workload.get("metadata") or {}
        kind = workload.get("kind")
        if not meta.get("name") or kind not in WORKLOAD_KINDS:
            return "ignored"
        namespace, name = meta["namespace"], meta["name"]
        key = (namespace, kind, name)
        role = object_name(kind, name)
        if event_type == "DELETED":
            self._applied.pop(key, None)
            if not await self._exists(namespace, role):
                return "absent"
            self._note(namespace, role, False)
            return "removed" if await cleanup(self.kube, namespace, kind, name) else "absent"
        wanted = desired(workload)
        if key in self._applied and self._applied[key] == wanted:
            return "unchanged"
        if wanted is None and not await self._exists(namespace, role):
            result = "absent"
        else:
            result = await reconcile(self.kube, workload)
            self._note(namespace, role, wanted is not None)
        self._applied[key] = wanted
        return result
