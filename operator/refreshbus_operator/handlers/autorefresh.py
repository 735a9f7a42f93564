"""Workloads feed auto-refresh: every event of a Deployment/StatefulSet/DaemonSet goes to
:meth:`AutoRefresher.workload_event`, which keeps only the opted-in ones. Plain event
handlers: nothing is written to the workloads. Async, so they run on the event loop that
owns the auto-refresher's tables (a sync handler would run in kopf's thread pool)."""

from __future__ import annotations

from typing import Any

import kopf

from refreshbus_operator.autorefresh import AutoRefresher


def _feed(memo: kopf.Memo, kind: str, type: str | None, body: kopf.Body) -> None:
    auto: AutoRefresher | None = memo.get("auto")
    if auto is not None:
        auto.workload_event(kind, type, body)


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _feed(memo, "Deployment", type, body)


@kopf.on.event("apps", "v1", "statefulsets")
async def statefulset_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _feed(memo, "StatefulSet", type, body)


@kopf.on.event("apps", "v1", "daemonsets")
async def daemonset_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _feed(memo, "DaemonSet", type, body)
