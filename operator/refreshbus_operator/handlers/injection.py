"""kopf registrations for sidecar injection: the webhook server's life (when enabled), the
per-workload sidecar RBAC and release record, and pods that asked for the sidecar but run
without it. Logic lives in refreshbus_operator.injection, refreshbus_operator.sidecar_rbac
and refreshbus_operator.release.

Workloads are followed with ``@kopf.on.event``: nothing is written onto the user's
Deployment (no kopf annotations, no finalizer); every event reconciles idempotently, and
the listing at start-up re-reconciles everything (level-triggered).
"""

from __future__ import annotations

from typing import Any

import kopf

from refreshbus_operator import release, sidecar_rbac
from refreshbus_operator.events import COMPONENT, Recorder
from refreshbus_operator.injection import config as injection_config
from refreshbus_operator.injection import skipped
from refreshbus_operator.kube import in_memo

_MEMO_CONFIG = "injection_config"
_MEMO_SERVER = "injection_server"
_MEMO_RBAC = "injection_rbac"
_MEMO_SKIPPED = "injection_skipped"
_MEMO_RELEASES = "release_keeper"
_MEMO_RECORDER = "injection_recorder"


def _config(memo: kopf.Memo) -> injection_config.InjectionConfig:
    if memo.get(_MEMO_CONFIG) is None:
        memo[_MEMO_CONFIG] = injection_config.from_env()
    cfg: injection_config.InjectionConfig = memo[_MEMO_CONFIG]
    return cfg


@kopf.on.startup()
async def start_injection_webhook(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    cfg = _config(memo)
    _reconciler(memo)  # set on the operator-wide memo, which kopf copies into every object's memo
    _keeper(memo)
    _skipped(memo)
    if not cfg.enabled:
        logger.info("sidecar injection webhook disabled (REFRESHBUS_INJECTION_ENABLED is not true)")
        return
    from refreshbus_operator.injection.webhook import WebhookServer

    server = WebhookServer(in_memo(memo), cfg)
    await server.start()
    memo[_MEMO_SERVER] = server


@kopf.on.cleanup()
async def stop_injection_webhook(memo: kopf.Memo, **_: Any) -> None:
    server = memo.get(_MEMO_SERVER)
    if server is not None:
        await server.stop()


def _reconciler(memo: kopf.Memo) -> sidecar_rbac.Reconciler:
    if memo.get(_MEMO_RBAC) is None:
        memo[_MEMO_RBAC] = sidecar_rbac.Reconciler(in_memo(memo))
    reconciler: sidecar_rbac.Reconciler = memo[_MEMO_RBAC]
    return reconciler


def _keeper(memo: kopf.Memo) -> release.Keeper:
    if memo.get(_MEMO_RELEASES) is None:
        memo[_MEMO_RELEASES] = release.Keeper(in_memo(memo))
    keeper: release.Keeper = memo[_MEMO_RELEASES]
    return keeper


def _recorder(memo: kopf.Memo) -> Recorder:
    if memo.get(_MEMO_RECORDER) is None:
        # The operator's Config names this replica; the injection handlers alone have none.
        instance = str(getattr(memo.get("config"), "instance", COMPONENT))
        memo[_MEMO_RECORDER] = Recorder(in_memo(memo), instance)
    recorder: Recorder = memo[_MEMO_RECORDER]
    return recorder


async def _follow_release(event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger) -> None:
    obj = event.get("object") or {}
    try:
        outcome = await _keeper(memo).handle(event.get("type"), obj)
    except release.ReleaseError as exc:
        # The workload's own Events say why it is not versioned (kubectl describe).
        meta = obj.get("metadata") or {}
        logger.warning("release record not created: %s", exc)
        await _recorder(memo).warning(
            meta.get("namespace", ""), meta.get("name", ""), meta.get("uid"), exc.reason, str(exc),
            involved=(obj.get("apiVersion", "apps/v1"), obj.get("kind", "")),
        )
        return
    if outcome in {"ensured", "removed"}:
        logger.info("release record %s", outcome)


async def _workload_event(event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger) -> None:
    obj = event.get("object") or {}
    reconciler = _reconciler(memo)
    result = await reconciler.handle(event.get("type"), obj)
    namespace = (obj.get("metadata") or {}).get("namespace")
    if (
        namespace
        and result in {"applied", "unchanged"}
        and sidecar_rbac.opted_in(obj)
        and reconciler.broker_needed(namespace)
    ):
        # Once per namespace and operator run: a restart propagates rotated broker credentials.
        cfg = _config(memo)
        copied = await sidecar_rbac.ensure_broker_secret(
            in_memo(memo),
            namespace,
            cfg.operator_namespace,
            cfg.broker_secret,
            cfg.broker_secret_key,
        )
        if copied != "missing":
            reconciler.broker_done(namespace)
    if result in {"applied", "removed"}:
        logger.info("sidecar RBAC %s", result)
    await _follow_release(event, memo, logger)


@kopf.on.event("apps", "v1", "deployments")
async def deployment_sidecar_rbac(
    event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    await _workload_event(event, memo, logger)


@kopf.on.event("apps", "v1", "statefulsets")
async def statefulset_sidecar_rbac(
    event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    await _workload_event(event, memo, logger)


@kopf.on.event("apps", "v1", "daemonsets")
async def daemonset_sidecar_rbac(
    event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    await _workload_event(event, memo, logger)


def _skipped(memo: kopf.Memo) -> skipped.SkippedInjections:
    if memo.get(_MEMO_SKIPPED) is None:
        memo[_MEMO_SKIPPED] = skipped.SkippedInjections(in_memo(memo), _recorder(memo), _config(memo))
    reporter: skipped.SkippedInjections = memo[_MEMO_SKIPPED]
    return reporter


def _asks_without_sidecar(body: kopf.Body, **_: Any) -> bool:
    return skipped.asks_without_sidecar(body)


@kopf.on.event("", "v1", "pods", when=_asks_without_sidecar)
async def pod_without_sidecar(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    await _skipped(memo).observe(event.get("type"), event.get("object") or {})
