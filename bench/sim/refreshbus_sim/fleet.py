"""Pod objects by the thousand through ONE API client (aiohttp, concurrent requests).

Each pod is what :func:`refreshbus_support.pods.create_pod` makes (a native sidecar
container with the injector's env, opted in), marked Running + Ready through the status
subresource, plus its identity token: a TokenRequest bound to the pod for the ack
audience, as the kubelet projects it into a real pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace

from refreshbus_operator.kube import Kube, pods_path, q
from refreshbus_support.pods import Owner, TestPod, phase_patch, pod_manifest
from refreshbus_wire.events import ACK_TOKEN_AUDIENCE

#: Requests in flight at once: enough to keep the API server busy on two cores.
CONCURRENCY = 32
TOKEN_SECONDS = 3600


async def create_pod(kube: Kube, namespace: str, name: str, deployment: str, labels: dict[str, str],
                     configmaps: Sequence[str]) -> tuple[TestPod, str]:
    """One Running, opted-in pod of Deployment ``deployment`` and its ack identity token."""
    manifest, pod = pod_manifest(namespace, name, labels=labels, owner=Owner.replicaset_of(deployment),
                                 configmaps=configmaps)
    created = await kube.apost(pods_path(namespace), manifest)
    pod = replace(pod, uid=created["metadata"]["uid"])
    await kube.apatch(f"{pods_path(namespace)}/{q(name)}/status", phase_patch("Running", ready=True))
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [ACK_TOKEN_AUDIENCE], "expirationSeconds": TOKEN_SECONDS,
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": pod.uid}}}
    answer = await kube.apost(f"/api/v1/namespaces/{q(namespace)}/serviceaccounts/default/token", request)
    return pod, str(answer["status"]["token"])


async def create_pods(
    kube: Kube,
    namespace: str,
    deployments: Sequence[tuple[str, int]],
    *,
    labels: dict[str, str],
    configmaps: Callable[[str], Sequence[str]],
    start: int = 0,
    concurrency: int = CONCURRENCY,
) -> list[tuple[TestPod, str]]:
    """``count`` pods for each (deployment, count), named ``<deployment>-5d8f9c7b6-<i>`` from
    ``start``; ``configmaps(deployment)`` are the ConfigMaps their sidecars manage."""
    slots = asyncio.Semaphore(concurrency)

    async def one(deployment: str, i: int) -> tuple[TestPod, str]:
        async with slots:
            return await create_pod(kube, namespace, f"{deployment}-5d8f9c7b6-{i:05d}", deployment,
                                    {**labels, "app": deployment}, configmaps(deployment))

    return list(await asyncio.gather(*(one(d, i) for d, n in deployments for i in range(start, start + n))))
