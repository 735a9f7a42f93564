"""Pods as API objects, the way a kubelet would leave them, with no kubelet.

:func:`create_pod` creates a Pod whose spec carries the ``refreshbus-sidecar`` native
sidecar container (an init container with ``restartPolicy: Always``, env as the injector
sets it), then marks it Running and Ready through the status subresource. The sidecar
*process* for it is started separately (:mod:`refreshbus_support.sidecars`), from the
same env.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from refreshbus_wire import pods as podc
from refreshbus_wire.events import ACK_TOKEN_AUDIENCE


class Kubectl(Protocol):
    """What these helpers need of the ``cluster`` fixture (refreshbus_testenv.ControlPlane)."""

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60.0) -> Any: ...


@dataclass(frozen=True, slots=True)
class Owner:
    """The pod's direct ownerReference. No garbage collector runs in the test control
    plane, so the owner need not exist; ``uid`` defaults to a random one."""

    kind: str
    name: str
    api_version: str = "apps/v1"
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def replicaset_of(cls, deployment: str, template_hash: str = "5d8f9c7b6") -> Owner:
        """The ReplicaSet a Deployment's pods belong to (pair it with the label
        ``pod-template-hash=<template_hash>``, which :func:`create_pod` adds)."""
        return cls(kind="ReplicaSet", name=f"{deployment}-{template_hash}")


@dataclass(frozen=True, slots=True)
class TestPod:
    """A pod created by :func:`create_pod`, with what its sidecar needs to know."""

    __test__ = False  # not a pytest test class

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    workload_kind: str
    workload_name: str
    #: The sidecar container's env in the pod spec (identity, sources, action).
    sidecar_env: Mapping[str, str]

    @property
    def configmaps(self) -> tuple[str, ...]:
        return podc.split_names(self.sidecar_env.get(podc.ENV_CONFIGMAPS))

    @property
    def secrets(self) -> tuple[str, ...]:
        return podc.split_names(self.sidecar_env.get(podc.ENV_SECRETS))


def sidecar_env_for(
    namespace: str,
    name: str,
    *,
    workload_kind: str,
    workload_name: str,
    app: str,
    configmaps: Sequence[str] = (),
    secrets: Sequence[str] = (),
    action: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The env the injector would give the sidecar container (without broker/paths)."""
    env = {
        podc.ENV_NAMESPACE: namespace,
        podc.ENV_POD_NAME: name,
        podc.ENV_APP: app,
        podc.ENV_WORKLOAD_KIND: workload_kind,
        podc.ENV_WORKLOAD_NAME: workload_name,
        podc.ENV_CONFIGMAPS: ",".join(configmaps),
        podc.ENV_SECRETS: ",".join(secrets),
    }
    env.update(action or {})
    return {k: v for k, v in env.items() if v}


def pod_manifest(
    namespace: str,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    owner: Owner | None = None,
    workload: tuple[str, str] | None = None,
    configmaps: Sequence[str] = (),
    secrets: Sequence[str] = (),
    action: Mapping[str, str] | None = None,
    with_sidecar: bool = True,
    service_account: str | None = None,
) -> tuple[dict[str, Any], TestPod]:
    """The Pod manifest :func:`create_pod` creates (arguments as there), and the
    :class:`TestPod` it describes once the API server gave it a uid (``uid`` empty here)."""
    labels = dict(labels or {})
    annotations = dict(annotations or {})
    if workload is None:
        if owner is None:
            workload = ("Pod", name)
        elif owner.kind == "ReplicaSet" and "-" in owner.name:
            deployment, template_hash = owner.name.rsplit("-", 1)
            labels.setdefault("pod-template-hash", template_hash)
            workload = ("Deployment", deployment)
        else:
            workload = (owner.kind, owner.name)
    app = labels.get("app.kubernetes.io/name") or labels.get("app") or workload[1]
    env = sidecar_env_for(namespace, name, workload_kind=workload[0], workload_name=workload[1], app=app,
                          configmaps=configmaps, secrets=secrets, action=action)
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": "registry.invalid/app:test"}],
    }
    if service_account is not None:
        spec["serviceAccountName"] = service_account
    if with_sidecar:
        annotations.setdefault(podc.ANN_INJECT, "true")
        if configmaps:
            annotations.setdefault(podc.ANN_CONFIGMAPS, ",".join(configmaps))
        if secrets:
            annotations.setdefault(podc.ANN_SECRETS, ",".join(secrets))
        annotations.setdefault(podc.ANN_INJECTED, "true")
        spec["shareProcessNamespace"] = True
        spec["initContainers"] = [{
            "name": podc.SIDECAR_CONTAINER,
            "image": "registry.invalid/refreshbus-sidecar:test",
            "restartPolicy": "Always",
            "env": [{"name": k, "value": v} for k, v in env.items()],
        }]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels,
                                "annotations": annotations}
    if owner is not None:
        metadata["ownerReferences"] = [{
            "apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": False,
        }]
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    pod = TestPod(namespace=namespace, name=name, uid="", labels=labels, annotations=annotations,
                  workload_kind=workload[0], workload_name=workload[1], sidecar_env=env)
    return manifest, pod


def create_pod(
    cluster: Kubectl,
    namespace: str,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    owner: Owner | None = None,
    workload: tuple[str, str] | None = None,
    configmaps: Sequence[str] = (),
    secrets: Sequence[str] = (),
    action: Mapping[str, str] | None = None,
    with_sidecar: bool = True,
    running: bool = True,
    service_account: str | None = None,
) -> TestPod:
    """Create a Pod object (and, if ``running``, mark it Running + Ready as a kubelet would).

    Args:
        labels, annotations: the pod's metadata; ``refreshbus.io/inject: "true"`` and the
            configmaps/secrets annotations are added when ``with_sidecar``.
        owner: the direct ownerReference (e.g. ``Owner.replicaset_of("orders")``).
        workload: (kind, name) the sidecar reports; default derived from ``owner``
            (a ReplicaSet from ``replicaset_of`` maps to its Deployment), else ("Pod", name).
        configmaps, secrets: sources the sidecar manages.
        action: extra sidecar env for the reload action, e.g.
            ``{podc.ENV_ACTION: "signal", podc.ENV_SIGNAL: "SIGHUP", podc.ENV_PROCESS: "nginx: master"}``.
        with_sidecar: False creates a pod that is not opted in.
        service_account: ``spec.serviceAccountName`` (it must exist; see :func:`ack_token`).
    """
    manifest, pod = pod_manifest(namespace, name, labels=labels, annotations=annotations, owner=owner,
                                 workload=workload, configmaps=configmaps, secrets=secrets, action=action,
                                 with_sidecar=with_sidecar, service_account=service_account)
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(manifest))
    pod = replace(pod, uid=json.loads(out.stdout)["metadata"]["uid"])
    if running:
        set_phase(cluster, pod, "Running", ready=True)
    return pod


def phase_patch(phase: str, *, ready: bool) -> dict[str, Any]:
    """The status-subresource merge patch a kubelet's report of ``phase`` amounts to."""
    status = "True" if ready else "False"
    conditions = [{"type": t, "status": status if t in ("Ready", "ContainersReady") else "True"}
                  for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    return {"status": {"phase": phase, "conditions": conditions, "podIP": "127.0.0.1",
                       "startTime": "2026-01-01T00:00:00Z"}}


def set_phase(cluster: Kubectl, pod: TestPod, phase: str, *, ready: bool) -> None:
    """Write ``status.phase`` and the Ready condition through the status subresource."""
    cluster.kubectl("-n", pod.namespace, "patch", "pod", pod.name, "--subresource=status",
                    "--type=merge", "-p", json.dumps(phase_patch(phase, ready=ready)))


def delete_pod(cluster: Kubectl, pod: TestPod) -> None:
    """Delete the pod object at once (no kubelet will ever confirm a graceful deletion)."""
    cluster.kubectl("-n", pod.namespace, "delete", "pod", pod.name, "--grace-period=0", "--force",
                    "--wait=false", "--ignore-not-found", check=False)


def ack_token(cluster: Kubectl, namespace: str, pod: str, uid: str | None = None, *,
              service_account: str = "default", audience: str | None = ACK_TOKEN_AUDIENCE,
              bound: bool = True, duration: str = "1h") -> str:
    """A token of ``service_account`` as the kubelet projects it into the pod for the ack
    audience: a TokenRequest bound to the Pod object, which the API server ties to that
    pod's name and uid and refuses once the pod is gone. ``audience=None``: the API
    server's own audience; ``bound=False``: not bound to any pod. The kubelet's tokens live
    10 minutes and are rotated; a test's lives ``duration`` and is not."""
    args = ["-n", namespace, "create", "token", service_account, f"--duration={duration}"]
    if audience is not None:
        args.append(f"--audience={audience}")
    if bound:
        args += ["--bound-object-kind=Pod", f"--bound-object-name={pod}"]
        if uid is not None:
            args.append(f"--bound-object-uid={uid}")
    return str(cluster.kubectl(*args).stdout.strip())
