"""Which workload a pod being admitted belongs to (the sidecar's workload identity)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def workload_of(pod: Mapping[str, Any]) -> tuple[str, str | None]:
    """(kind, name) of the workload that owns the pod, from its controller ownerReference.

    A ReplicaSet whose name ends in ``-<pod-template-hash>`` belongs to a Deployment of
    the name without that suffix. A pod without a known owner is its own workload; its
    name is ``None`` because at admission it may only have a generateName (the sidecar
    then gets it from the Downward API).
    """
    meta = pod.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    owner = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if owner is None:
        return "Pod", None
    kind, name = owner.get("kind", ""), owner.get("name", "")
    if kind == "ReplicaSet":
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if template_hash and name.endswith("-" + template_hash):
            return "Deployment", name[: -len(template_hash) - 1]
        return "ReplicaSet", name
    if kind in {"StatefulSet", "DaemonSet"}:
        return kind, name
    return "Pod", None
