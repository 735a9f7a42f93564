"""Kubernetes Events on ConfigRefresh objects: start, finish, and every failure.

Written directly (core/v1 Event) instead of through kopf's posting queue, because rounds
run in our own tasks, outside kopf handler contexts. Posting is best effort: an Event
that cannot be written is logged, never allowed to fail a refresh.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from refreshbus_wire import now

from refreshbus_operator import API_VERSION, KIND
from refreshbus_operator.kube import Kube, events_path
from refreshbus_operator.status import fmt_time

log = logging.getLogger(__name__)

COMPONENT = "refreshbus-operator"


def event_body(
    namespace: str, name: str, uid: str | None, type_: str, reason: str, message: str, instance: str,
    involved: tuple[str, str] = (API_VERSION, KIND),
) -> dict[str, Any]:
    """A core/v1 Event on the object ``involved`` = (apiVersion, kind) ``namespace/name``."""
    stamp = fmt_time(now(), seconds=True)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved[0],
            "kind": involved[1],
            "name": name,
            "namespace": namespace,
            **({"uid": uid} if uid else {}),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class Recorder:
    def __init__(self, kube: Kube, instance: str) -> None:
        self.kube = kube
        self.instance = instance

    async def post(
        self, namespace: str, name: str, uid: str | None, type_: str, reason: str, message: str,
        involved: tuple[str, str] = (API_VERSION, KIND),
    ) -> None:
        body = event_body(namespace, name, uid, type_, reason, message, self.instance, involved)
        try:
            await self.kube.apost(events_path(namespace), body)
        except Exception as exc:  # best effort: never fail a refresh over an Event
            log.warning("could not post Event %s on %s/%s: %s", reason, namespace, name, exc)

    async def normal(self, namespace: str, name: str, uid: str | None, reason: str, message: str) -> None:
        await self.post(namespace, name, uid, "Normal", reason, message)

    async def warning(
        self, namespace: str, name: str, uid: str | None, reason: str, message: str,
        involved: tuple[str, str] = (API_VERSION, KIND),
    ) -> None:
        await self.post(namespace, name, uid, "Warning", reason, message, involved)
