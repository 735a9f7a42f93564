"""Create, change and delete ConfigMaps and Secrets through kubectl, returning the
``resourceVersion`` the API server assigned (what an event's source carries)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from refreshbus_wire.release import Release, encode_record, record_name

from refreshbus_support.pods import Kubectl


def put_configmap(
    cluster: Kubectl, namespace: str, name: str, data: Mapping[str, str],
    binary: Mapping[str, bytes] | None = None,
) -> str:
    """Create or replace a ConfigMap; returns its new resourceVersion."""
    manifest: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": dict(data),
    }
    if binary:
        manifest["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    return _apply(cluster, manifest)


def put_secret(cluster: Kubectl, namespace: str, name: str, data: Mapping[str, bytes]) -> str:
    """Create or replace an Opaque Secret; returns its new resourceVersion."""
    manifest = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    return _apply(cluster, manifest)


def put_release_record(
    cluster: Kubectl, namespace: str, release: Release, contents: Mapping[str, Mapping[str, bytes]],
) -> str:
    """Create or replace a workload's release record as the operator writes it (``contents``:
    source hash -> files, as :func:`refreshbus_wire.release.encode_record` takes them);
    returns its new resourceVersion."""
    manifest: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": record_name(release.kind, release.name), "namespace": namespace},
        **encode_record(release, contents),
    }
    return _apply(cluster, manifest)


def delete(cluster: Kubectl, namespace: str, kind: str, name: str) -> None:
    cluster.kubectl("-n", namespace, "delete", kind.lower(), name, "--ignore-not-found")


def _apply(cluster: Kubectl, manifest: Mapping[str, Any]) -> str:
    # replace-or-create without kubectl apply's last-applied annotation
    exists = cluster.kubectl("-n", manifest["metadata"]["namespace"], "get", manifest["kind"].lower(),
                             manifest["metadata"]["name"], "--ignore-not-found", "-o", "name").stdout.strip()
    verb = "replace" if exists else "create"
    out = cluster.kubectl(verb, "-o", "json", "-f", "-", input=json.dumps(manifest))
    return str(json.loads(out.stdout)["metadata"]["resourceVersion"])
