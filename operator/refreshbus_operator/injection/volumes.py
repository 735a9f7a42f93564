"""The pod's volumes: the ones the injector adds, and app mounts of managed
ConfigMaps/Secrets pointed at the shared volume the sidecar keeps up to date."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refreshbus_wire import contract, pods
from refreshbus_wire.events import ACK_TOKEN_AUDIENCE

from refreshbus_operator.injection.config import InjectionConfig

#: The shared (emptyDir) volume the sidecar writes and the app reads.
SHARED_VOLUME = "refreshbus-config"
#: The broker URLs Secret, mounted into the sidecar only.
BROKER_VOLUME = "refreshbus-broker"
BROKER_MOUNT = "/etc/refreshbus/broker"
#: The sidecar's own service-account token volume (independent of automountServiceAccountToken).
TOKEN_VOLUME = "refreshbus-api-access"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _volume_source(volume: Mapping[str, Any]) -> tuple[str, str, bool] | str | None:
    """(kind, name, has items) of a ConfigMap/Secret volume; a str for a projected volume
    that cannot be replaced (the reason); None for anything else."""
    if cm := volume.get("configMap"):
        return "ConfigMap", cm.get("name", ""), bool(cm.get("items"))
    if secret := volume.get("secret"):
        return "Secret", secret.get("secretName", ""), bool(secret.get("items"))
    if projected := volume.get("projected"):
        sources = projected.get("sources") or []
        found = [
            ("ConfigMap", s["configMap"]) if "configMap" in s else ("Secret", s["secret"])
            for s in sources
            if "configMap" in s or "secret" in s
        ]
        if len(sources) == 1 and found:
            kind, src = found[0]
            return kind, src.get("name", ""), bool(src.get("items"))
        if found:
            return "combines several sources"
    return None


def new_volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    return [
        # tmpfs: Secret content never touches the node's disk, as with kubelet's secret volumes.
        {"name": SHARED_VOLUME, "emptyDir": {"medium": "Memory"}},
        {
            "name": BROKER_VOLUME,
            "secret": {
                "secretName": config.broker_secret,
                "defaultMode": 0o444,
                "items": [{"key": config.broker_secret_key, "path": config.broker_secret_key}],
            },
        },
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ],
            },
        },
        # The pod's identity for its acks: a token only for our audience, which the kubelet
        # binds to this pod and rotates (the sidecar re-reads it; the operator reviews it).
        {
            "name": pods.ACK_TOKEN_VOLUME,
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": ACK_TOKEN_AUDIENCE,
                            "path": pods.ACK_TOKEN_FILE,
                            "expirationSeconds": pods.ACK_TOKEN_EXPIRATION_SECONDS,
                        }
                    }
                ],
            },
        },
    ]


def rewrite_mounts(
    spec: dict[str, Any], managed: set[tuple[str, str]]
) -> tuple[set[str], list[str], list[str]]:
    """Point app mounts of managed volumes at the shared volume, in place. Returns the
    names of volumes no container uses any more, warnings, and the in-place file entries
    (``<source dir>/<key>``) the sidecar must keep for subPath file mounts."""
    warnings: list[str] = []
    replaceable: dict[str, str] = {}
    replaceable_sources: dict[str, tuple[str, str]] = {}
    inplace: dict[str, None] = {}
    for volume in spec.get("volumes") or []:
        source = _volume_source(volume)
        if isinstance(source, str):
            warnings.append(
                f"refreshbus: projected volume {volume['name']!r} {source}; it stays "
                "kubelet-managed (refreshed files are under /refreshbus in the sidecar only)"
            )
        elif source is not None and (source[0], source[1]) in managed:
            kind, name, has_items = source
            if has_items:
                warnings.append(
                    f"refreshbus: volume {volume['name']!r} remaps keys with items; it stays "
                    "kubelet-managed and is not refreshed in place"
                )
            else:
                replaceable[volume["name"]] = pods.source_dir_name(kind, name)
                replaceable_sources[volume["name"]] = (kind, name)
    still_used: set[str] = set()
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            mounts = container.get("volumeMounts") or []
            extra: list[dict[str, Any]] = []
            for i, mount in enumerate(mounts):
                dir_name = replaceable.get(mount.get("name", ""))
                if dir_name is None:
                    still_used.add(mount.get("name", ""))
                    continue
                key = mount.get("subPath") or ""
                if key and not mount.get("subPathExpr") and contract.is_key(key):
                    # A file bind mount pins one inode: mount the sidecar's in-place copy of the key.
                    kind, name = replaceable_sources[mount["name"]]
                    mounts[i] = {
                        "name": SHARED_VOLUME,
                        "mountPath": mount["mountPath"],
                        "subPath": pods.inplace_path(kind, name, key),
                        "readOnly": True,
                    }
                    inplace.setdefault(pods.inplace_entry(kind, name, key), None)
                    continue
                if mount.get("subPath") or mount.get("subPathExpr"):
                    still_used.add(mount["name"])
                    alt = f"{pods.DEFAULT_TARGET_DIR}/{dir_name}"
                    warnings.append(
                        f"refreshbus: {container['name']}: {mount['mountPath']} mounts a nested path or uses "
                        f"subPathExpr, which cannot be kept up to date; it keeps its start-up content. The "
                        f"refreshed files "
                        f"are at {alt} in the same container"
                    )
                    if not any(m.get("mountPath") == alt for m in (*mounts, *extra)):
                        extra.append(
                            {"name": SHARED_VOLUME, "mountPath": alt, "subPath": dir_name, "readOnly": True}
                        )
                    continue
                mounts[i] = {
                    "name": SHARED_VOLUME,
                    "mountPath": mount["mountPath"],
                    "subPath": dir_name,
                    "readOnly": True,
                }
            if extra:
                container["volumeMounts"] = [*mounts, *extra]
    unused = set(replaceable) - still_used
    return unused, warnings, list(inplace)
