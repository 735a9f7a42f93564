"""Auto-refresh: a ConfigRefresh whenever a ConfigMap/Secret of an opted-in workload changes.

Workloads (Deployments, StatefulSets, DaemonSets) whose pod template says
``refreshbus.io/auto-refresh: "true"`` are reported by kopf event handlers. For each
ConfigMap/Secret such a workload manages (``refreshbus.io/configmaps`` / ``secrets`` on
its pod template), this module runs **one** watch restricted to that object by name
(``fieldSelector=metadata.name=...``): the cost scales with the opted-in workloads, never
with every ConfigMap and Secret in the cluster, and nothing is cached. Of each version
only a content hash is kept (data + binaryData; a Secret's values are hashed and
dropped at once), so a metadata-only update (labels, annotations) never triggers a
refresh. Secrets are watched only with ``auto_refresh_secrets`` (off by default: the
operator then never lists or watches a Secret, and says so once per workload that names
some). A real change starts a quiet period (``auto_refresh_debounce``); when it ends
without further edits, one ConfigRefresh is created for the workload (``generateName``,
an owner reference to the workload, labels linking them).

Finished auto-created ConfigRefreshes are garbage-collected: deleted
``ttl_seconds_after_finished`` after completion, and beyond ``history_limit`` per
workload (newest kept), like Jobs' ``ttlSecondsAfterFinished``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from refreshbus_wire import contract

from refreshbus_operator import API_VERSION, KIND, metrics
from refreshbus_operator import status as st
from refreshbus_operator.broker import backoff
from refreshbus_operator.kube import ApiError, Kube, cfr_path, q
from refreshbus_operator.settings import AUTO_REFRESH_LABEL, Config

log = logging.getLogger(__name__)

KIND_LABEL = "refreshbus.io/auto-refresh-kind"
SOURCE_ANNOTATION = "refreshbus.io/changed-sources"

WorkloadKey = tuple[str, str, str]  # namespace, kind, name
SourceKey = tuple[str, str, str]  # namespace, ConfigMap|Secret, name


@dataclass
class Workload:
    uid: str | None
    configmaps: frozenset[str]
    secrets: frozenset[str]

    def sources(self, namespace: str) -> set[SourceKey]:
        return {(namespace, "ConfigMap", n) for n in self.configmaps} | {
            (namespace, "Secret", n) for n in self.secrets
        }


def opted_in(body: Mapping[str, Any]) -> Workload | None:
    """The workload's managed sources if its pod template opts in to auto-refresh.

    Read with the same parser as the injection webhook: a template the webhook would
    refuse (``auto-refresh: "yes"``, a bad name...) never gets pods, so it is not tracked."""
    template = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
    try:
        options = contract.parse_annotations(template.get("annotations") or {})
    except contract.ContractError:
        return None
    if not options.auto_refresh:
        return None
    return Workload(
        uid=(body.get("metadata") or {}).get("uid"),
        configmaps=frozenset(options.configmaps),
        secrets=frozenset(options.secrets),
    )


def content_hash(kind: str, obj: Mapping[str, Any]) -> str:
    """Hash of what a sidecar would write (metadata-only updates do not change it)."""
    if kind == "Secret":
        content: dict[str, Any] = {"data": obj.get("data") or {}, "type": obj.get("type")}
    else:
        content = {"data": obj.get("data") or {}, "binaryData": obj.get("binaryData") or {}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def label_value(name: str) -> str:
    if len(name) <= 63:
        return name
    return f"{name[:54]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def refresh_manifest(
    namespace: str, kind: str, name: str, uid: str | None, sources: list[SourceKey]
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "generateName": f"{name[:50]}-auto-",
        "namespace": namespace,
        "labels": {AUTO_REFRESH_LABEL: label_value(name), KIND_LABEL: kind.lower()},
        "annotations": {SOURCE_ANNOTATION: ",".join(f"{k}/{n}" for _, k, n in sources)},
    }
    if uid:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": False}
        ]
    spec_sources = [
        {"configMap": {"name": n}} if k == "ConfigMap" else {"secret": {"name": n}} for _, k, n in sources
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {"sources": spec_sources, "target": {"workload": {"kind": kind, "name": name}}},
    }


def gc_victims(
    items: Sequence[Mapping[str, Any]], at: float, ttl: float, history_limit: int
) -> list[tuple[str, str]]:
    """(namespace, name) of finished auto-created ConfigRefreshes to delete."""
    finished: dict[tuple[str, str, str], list[tuple[float, str, str]]] = {}
    victims: set[tuple[str, str]] = set()
    for item in items:
        meta = item.get("metadata") or {}
        status = item.get("status") or {}
        if status.get("phase") not in {p.value for p in st.FINAL_PHASES}:
            continue
        done = st.parse_time(status.get("completionTime"))
        if done is None:
            continue
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        labels = meta.get("labels") or {}
        group = (ns, labels.get(KIND_LABEL, ""), labels.get(AUTO_REFRESH_LABEL, ""))
        finished.setdefault(group, []).append((done.timestamp(), ns, name))
        if at - done.timestamp() >= ttl:
            victims.add((ns, name))
    for entries in finished.values():
        entries.sort(reverse=True)
        for _, ns, name in entries[history_limit:]:
            victims.add((ns, name))
    return sorted(victims)


@dataclass
class SourceWatch:
    key: SourceKey
    stop: threading.Event = field(default_factory=threading.Event)
    hash: str | None = None
    seen: bool = False


class AutoRefresher:
    def __init__(self, config: Config, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.workloads: dict[WorkloadKey, Workload] = {}
        self.watches: dict[SourceKey, SourceWatch] = {}
        self.changed: dict[WorkloadKey, set[SourceKey]] = {}
        self.timers: dict[WorkloadKey, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gc: asyncio.Task[None] | None = None
        #: Workloads already told that their Secrets are not watched (logged once each).
        self._secrets_unwatched: set[WorkloadKey] = set()

    def watched_sources(self, namespace: str, workload: Workload) -> set[SourceKey]:
        """The sources of ``workload`` this operator watches: Secrets only when allowed."""
        sources = workload.sources(namespace)
        if not self.config.auto_refresh_secrets:
            sources = {s for s in sources if s[1] != "Secret"}
        return sources

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._gc = asyncio.create_task(self._gc_loop(), name="refreshbus-auto-refresh-gc")

    async def stop(self) -> None:
        for watch in self.watches.values():
            watch.stop.set()
        for timer in self.timers.values():
            timer.cancel()
        if self._gc is not None:
            self._gc.cancel()
        for task in list(self._tasks):
            task.cancel()

    # -- workloads (from kopf event handlers) ---------------------------------------------

    def workload_event(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: WorkloadKey = (meta.get("namespace", ""), kind, meta.get("name", ""))
        workload = None if event_type == "DELETED" or meta.get("deletionTimestamp") else opted_in(body)
        if workload is None:
            self._secrets_unwatched.discard(key)
            if self.workloads.pop(key, None) is not None:
                log.info("auto-refresh off for %s %s/%s", kind, key[0], key[2])
        else:
            unwatched = workload.secrets and not self.config.auto_refresh_secrets
            if unwatched and key not in self._secrets_unwatched:
                self._secrets_unwatched.add(key)
                log.info(
                    "auto-refresh for %s %s/%s follows its ConfigMaps only: its Secrets (%s) are not "
                    "watched because auto-refresh on Secrets is off (REFRESHBUS_OPERATOR_AUTO_REFRESH_SECRETS"
                    "/--auto-refresh-secrets; Helm value operator.autoRefresh.secrets); refresh them "
                    "with a ConfigRefresh",
                    kind,
                    key[0],
                    key[2],
                    ", ".join(sorted(workload.secrets)),
                )
            if key not in self.workloads:
                log.info(
                    "auto-refresh on for %s %s/%s (%s)",
                    kind,
                    key[0],
                    key[2],
                    ", ".join(sorted(f"{k}/{n}" for _, k, n in self.watched_sources(key[0], workload)))
                    or "nothing to watch",
                )
            self.workloads[key] = workload
        self._sync_watches()

    def _sync_watches(self) -> None:
        wanted: set[SourceKey] = set()
        for (ns, _, _), workload in self.workloads.items():
            wanted |= self.watched_sources(ns, workload)
        for key in list(self.watches):
            if key not in wanted:
                self.watches.pop(key).stop.set()
        for key in wanted - set(self.watches):
            watch = SourceWatch(key)
            self.watches[key] = watch
            threading.Thread(
                target=self._watch, args=(watch,), name=f"watch-{key[1]}-{key[2]}", daemon=True
            ).start()
        metrics.WATCHED_SOURCES.set(len(self.watches))

    # -- one watch per source (thread) ------------------------------------------------------

    def _watch(self, watch: SourceWatch) -> None:
        ns, kind, name = watch.key
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        path = f"/api/v1/namespaces/{q(ns)}/{plural}"
        selector = f"metadata.name={name}"
        attempt = 0
        while not watch.stop.is_set():
            try:
                listing = self.kube.get(path, fieldSelector=selector)
                items = listing.get("items") or []
                self._report(watch, content_hash(kind, items[0]) if items else None, initial=True)
                rv = (listing.get("metadata") or {}).get("resourceVersion")
                while not watch.stop.is_set():
                    query = {
                        "watch": "1",
                        "fieldSelector": selector,
                        "resourceVersion": rv,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": "300",
                    }
                    for event in self.kube.stream(path, query):
                        if watch.stop.is_set():
                            return
                        etype, obj = event.get("type"), event.get("object") or {}
                        if etype == "ERROR":
                            raise ApiError(int(obj.get("code") or 500), "watch error", obj)
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        if etype in ("ADDED", "MODIFIED"):
                            self._report(watch, content_hash(kind, obj), initial=False)
                        elif etype == "DELETED":
                            self._report(watch, None, initial=False)
                    attempt = 0
            except Exception as exc:
                if watch.stop.is_set():
                    return
                delay = backoff(attempt, 0.5, 30.0)
                attempt += 1
                log.debug("watch of %s %s/%s restarts in %.1fs: %s", kind, ns, name, delay, exc)
                watch.stop.wait(delay)

    def _report(self, watch: SourceWatch, digest: str | None, initial: bool) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._observed, watch, digest, initial)

    def _observed(self, watch: SourceWatch, digest: str | None, initial: bool) -> None:
        previous, seen = watch.hash, watch.seen
        watch.hash, watch.seen = digest, True
        if not seen or digest is None or (initial and previous is None):
            return  # first sight (baseline), deletion, or the object appeared after a re-list
        if digest == previous:
            if not initial:
                metrics.SOURCE_UPDATES.labels(update="metadata").inc()
                log.debug("%s %s/%s: metadata-only update, nothing to refresh",
                          watch.key[1], watch.key[0], watch.key[2])
            return
        metrics.SOURCE_UPDATES.labels(update="content").inc()
        ns, kind, name = watch.key
        for wkey, workload in self.workloads.items():
            if wkey[0] == ns and watch.key in workload.sources(ns):
                log.info(
                    "%s %s/%s changed: refresh of %s %s due in %.1fs",
                    kind,
                    ns,
                    name,
                    wkey[1],
                    wkey[2],
                    self.config.auto_refresh_debounce,
                )
                self.changed.setdefault(wkey, set()).add(watch.key)
                self._debounce(wkey)

    def _debounce(self, wkey: WorkloadKey) -> None:
        assert self._loop is not None
        timer = self.timers.pop(wkey, None)
        if timer is not None:
            timer.cancel()
        self.timers[wkey] = self._loop.call_later(self.config.auto_refresh_debounce, self._fire, wkey)

    def _fire(self, wkey: WorkloadKey) -> None:
        self.timers.pop(wkey, None)
        sources = sorted(self.changed.pop(wkey, set()))
        workload = self.workloads.get(wkey)
        if not sources or workload is None:
            return
        task = asyncio.create_task(self._create(wkey, workload, sources))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(self, wkey: WorkloadKey, workload: Workload, sources: list[SourceKey]) -> None:
        ns, kind, name = wkey
        body = refresh_manifest(ns, kind, name, workload.uid, sources)
        for attempt in range(5):
            try:
                created = await self.kube.apost(cfr_path(ns), body)
                metrics.AUTO_REFRESHES.inc()
                log.info(
                    "auto-refresh: created ConfigRefresh %s/%s for %s %s",
                    ns,
                    created["metadata"]["name"],
                    kind,
                    name,
                )
                return
            except Exception as exc:
                log.warning(
                    "auto-refresh: could not create a ConfigRefresh for %s %s/%s: %s", kind, ns, name, exc
                )
                await asyncio.sleep(backoff(attempt, 0.5, 10.0))

    # -- garbage collection -------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gc_interval)
            try:
                await self.collect()
            except Exception as exc:
                log.warning("auto-refresh GC failed: %s", exc)

    async def collect(self) -> int:
        """Delete finished auto-created ConfigRefreshes past their TTL or history limit."""
        paths = [cfr_path(ns) for ns in self.config.namespaces] or [cfr_path(None)]
        items: list[dict[str, Any]] = []
        for path in paths:
            listing = await self.kube.aget(path, labelSelector=AUTO_REFRESH_LABEL)
            items += listing.get("items") or []
        victims = gc_victims(
            items, time.time(), self.config.ttl_seconds_after_finished, self.config.history_limit
        )
        for ns, name in victims:
            try:
                await self.kube.adelete(cfr_path(ns, name))
                log.info("auto-refresh GC: deleted ConfigRefresh %s/%s", ns, name)
            except ApiError as exc:
                if not exc.not_found:
                    raise
        return len(victims)
