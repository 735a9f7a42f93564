"""The sidecar container itself: image, environment, probes, resources, mounts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refreshbus_wire import pods
from refreshbus_wire.contract import PodOptions

from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.identity import workload_of
from refreshbus_operator.injection.volumes import (
    BROKER_MOUNT,
    BROKER_VOLUME,
    SHARED_VOLUME,
    TOKEN_MOUNT,
    TOKEN_VOLUME,
)

HEALTH_PORT_NAME = "rb-health"


def sidecar_container(
    pod: Mapping[str, Any],
    options: PodOptions,
    config: InjectionConfig,
    sc: Mapping[str, Any],
    same_uid: bool,
    inplace: Sequence[str] = (),
) -> dict[str, Any]:
    kind, name = workload_of(pod)

    def field_env(var: str, path: str) -> dict[str, Any]:
        return {"name": var, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    env: list[dict[str, Any]] = [
        field_env(pods.ENV_NAMESPACE, "metadata.namespace"),
        field_env(pods.ENV_POD_NAME, "metadata.name"),
        field_env(pods.ENV_POD_UID, "metadata.uid"),
        {"name": pods.ENV_WORKLOAD_KIND, "value": kind},
        {"name": pods.ENV_WORKLOAD_NAME, "value": name}
        if name
        else field_env(pods.ENV_WORKLOAD_NAME, "metadata.name"),
    ]
    if options.app:
        env.append({"name": pods.ENV_APP, "value": options.app})

    def add(var: str, value: str | None) -> None:
        if value:
            env.append({"name": var, "value": value})

    add(pods.ENV_CONFIGMAPS, ",".join(options.configmaps))
    add(pods.ENV_SECRETS, ",".join(options.secrets))
    add(pods.ENV_TARGET_DIR, pods.DEFAULT_TARGET_DIR)
    add(pods.ENV_INPLACE_FILES, ",".join(inplace))
    add(pods.ENV_ACTION, options.action)
    add(pods.ENV_SIGNAL, options.signal)
    add(pods.ENV_PROCESS, options.process)
    add(pods.ENV_RELOAD_URL, options.reload_url)
    add(pods.ENV_RELOAD_METHOD, options.reload_method)
    add(pods.ENV_HEALTH_URL, options.health_url)
    add(pods.ENV_BROKER_URLS_FILE, f"{BROKER_MOUNT}/{config.broker_secret_key}")
    add(pods.ENV_ACK_TOKEN_FILE, f"{pods.ACK_TOKEN_DIR}/{pods.ACK_TOKEN_FILE}")
    add(pods.ENV_HEALTH_PORT, str(config.health_port))
    add(pods.ENV_LOG_LEVEL, config.log_level)
    if not same_uid and options.secrets:
        # Another user (the app) must read the files, as with kubelet's default 0644.
        add(pods.ENV_SECRET_MODE, "0444")
    limits = {"memory": config.memory_limit}
    if config.cpu_limit:
        limits["cpu"] = config.cpu_limit

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": HEALTH_PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "name": pods.SIDECAR_CONTAINER,
        "image": config.sidecar_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["run"],
        "restartPolicy": "Always",
        "env": env,
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": config.health_port, "protocol": "TCP"}],
        # Native sidecar: the app containers start only once this passes (initial config written).
        "startupProbe": probe("/readyz", 1, 300),
        "livenessProbe": probe("/livez", 10, 3),
        "resources": {
            "requests": {"cpu": config.cpu_request, "memory": config.memory_request},
            "limits": limits,
        },
        "securityContext": dict(sc),
        "volumeMounts": [
            {"name": SHARED_VOLUME, "mountPath": pods.DEFAULT_TARGET_DIR},
            {"name": BROKER_VOLUME, "mountPath": BROKER_MOUNT, "readOnly": True},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
            {"name": pods.ACK_TOKEN_VOLUME, "mountPath": pods.ACK_TOKEN_DIR, "readOnly": True},
        ],
    }
