"""Pods that asked for the sidecar and run without it: reported, never silent.

With ``failurePolicy: Ignore`` (the default) a pod created while the webhook is down,
unreachable or not trusted (a caBundle that does not match its certificate) is admitted
as it is: no sidecar, so its config is never refreshed. The operator sees every pod that
asks for the sidecar (``refreshbus.io/inject``, annotation or label) and lacks it; when
the webhook, had it been called, would have injected it (or refused the pod), a Warning
Event ``InjectionSkipped`` is posted on the pod and
``refreshbus_operator_injection_skipped_total`` counts it. Pods the webhook skips on
purpose (excluded or opted-out namespaces) are not reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from refreshbus_wire import pods

from refreshbus_operator import metrics
from refreshbus_operator.events import Recorder
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.mutation import decide
from refreshbus_operator.injection.options import already_injected, wants_injection
from refreshbus_operator.injection.security import Namespace
from refreshbus_operator.kube import Kube, q

log = logging.getLogger("refreshbus.injection")

REASON = "InjectionSkipped"


def asks_without_sidecar(pod: Mapping[str, Any]) -> bool:
    """The pod asks for the sidecar and does not have it (cheap: no API call)."""
    return wants_injection(pod) and not already_injected(pod)


def missed(pod: Mapping[str, Any], namespace: Namespace, config: InjectionConfig) -> str | None:
    """Why a pod without its sidecar is worth an Event, or None (it did not ask, has it, or
    the webhook would have left it alone as well)."""
    if not asks_without_sidecar(pod):
        return None
    decision = decide(pod, namespace, config)
    if decision.allowed and not decision.injected:
        return None
    would = "inject it" if decision.allowed else f"refuse the pod: {decision.message}"
    return (
        f"the pod asks for the refreshbus sidecar ({pods.ANN_INJECT}) but was created without it: "
        "the injection webhook was not called or did not answer in time (failurePolicy Ignore), "
        f"and would {would}. Its config is not refreshed; once the webhook is up, delete the pod "
        "so that its controller recreates it"
    )


class SkippedInjections:
    """Reports each such pod once per operator run (its uid is forgotten when it is deleted)."""

    def __init__(self, kube: Kube, recorder: Recorder, config: InjectionConfig) -> None:
        self.kube = kube
        self.recorder = recorder
        self.config = config
        self.reported: set[str] = set()

    async def observe(self, event_type: str | None, pod: Mapping[str, Any]) -> bool:
        """Handle one watch event of a pod; True when it was reported now."""
        meta = pod.get("metadata") or {}
        uid, name, ns_name = meta.get("uid") or "", meta.get("name") or "", meta.get("namespace") or ""
        if event_type == "DELETED":
            self.reported.discard(uid)
            return False
        if not uid or uid in self.reported or meta.get("deletionTimestamp") or not asks_without_sidecar(pod):
            return False
        if ns_name in self.config.excluded():
            return False  # never injected there; spare the namespace lookup
        ns = await self.kube.aget_metadata(f"/api/v1/namespaces/{q(ns_name)}")
        namespace = Namespace(ns_name, dict((ns.get("metadata") or {}).get("labels") or {}))
        message = missed(pod, namespace, self.config)
        if message is None:
            return False
        self.reported.add(uid)
        metrics.INJECTION_SKIPPED.labels(namespace=ns_name).inc()
        log.warning("pod %s/%s: %s", ns_name, name, message)
        await self.recorder.warning(ns_name, name, uid, REASON, message, involved=("v1", "Pod"))
        return True
