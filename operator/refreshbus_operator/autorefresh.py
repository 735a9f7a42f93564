"""Auto-refresh: a ConfigRefresh whenever a ConfigMap/Secret of an opted-in workload changes.

Workloads (Deployments, StatefulSets, DaemonSets) whose pod template says
``refreshbus.io/auto-refresh: "true"`` are reported by kopf event handlers. For each
ConfigMap/Secret such a workload manages (``refreshbus.io/configmaps`` / ``secrets`` on
its pod template), a watch runs: one per namespace on its ConfigMaps
(``auto_refresh_watch_scope=namespace``, the default: one connection however many are
named) or one per ConfigMap by name (``object``); Secrets always by name. Watches are
asyncio tasks that only the supervisor task starts and cancels, at most
``auto_refresh_max_watches``; nothing is cached. Of each version only a content hash is
kept (data + binaryData; a Secret's values are hashed and dropped at once), so a
metadata-only update (labels, annotations) never triggers a
refresh. Secrets are watched only with ``auto_refresh_secrets`` (off by default: the
operator then never lists or watches a Secret, and says so once per workload that names
some). The first real change after a quiet period is refreshed at once: one ConfigRefresh
for the workload (``generateName``, an owner reference to the workload, labels linking
them); changes within ``auto_refresh_debounce`` of it are gathered into one more at the
end of that window (a throttle, not a delay: an edit waits for no quiet period).

A workload whose template also carries ``refreshbus.io/rollout`` (versioned: it has a
release record) gets ConfigRefreshes with ``spec.rollout`` (its steps, and its
``refreshbus.io/rollout-bake`` as ``bakeSeconds``) for its ConfigMaps; a changed Secret,
never versioned, gets a plain one of its own. A content the record lists as rejected (its
rollout was rolled back) is never rolled out again automatically: only a new edit is.

Finished auto-created ConfigRefreshes are garbage-collected: deleted
``ttl_seconds_after_finished`` after completion, and beyond ``history_limit`` per
workload (newest kept), like Jobs' ``ttlSecondsAfterFinished``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from refreshbus_wire import contract

from refreshbus_operator import API_VERSION, KIND, metrics
from refreshbus_operator import release as rs
from refreshbus_operator import status as st
from refreshbus_operator.broker import backoff
from refreshbus_operator.kube import ApiError, Kube, cfr_path, q
from refreshbus_operator.settings import AUTO_REFRESH_LABEL, Config
from refreshbus_operator.tasks import cancel_and_wait

log = logging.getLogger(__name__)

KIND_LABEL = "refreshbus.io/auto-refresh-kind"
SOURCE_ANNOTATION = "refreshbus.io/changed-sources"
#: On an auto-created ConfigRefresh: {"ConfigMap/<name>": content hash} of the workload's
#: ConfigMaps when it was created (Secrets never: a hash of a low-entropy value can be guessed).
HASHES_ANNOTATION = "refreshbus.io/source-hashes"
#: When the record was made, to the microsecond: two auto-created ConfigRefreshes of one
#: workload are often created within the same second, creationTimestamp's resolution.
RECORDED_AT_ANNOTATION = "refreshbus.io/recorded-at"

WorkloadKey = tuple[str, str, str]  # namespace, kind, name
SourceKey = tuple[str, str, str]  # namespace, ConfigMap|Secret, name
WatchKey = tuple[str, str, str | None]  # namespace, ConfigMap|Secret, name (None: all of the namespace)
#: Per workload, the source hashes its newest auto-created ConfigRefresh was made for.
Records = dict[WorkloadKey, dict[SourceKey, str]]

#: Server-side bound of one watch request; the client gives up 30 s after it (a half-open
#: connection), and the watch resumes from its last resourceVersion.
WATCH_SECONDS = 300


@dataclass
class Workload:
    uid: str | None
    configmaps: frozenset[str]
    secrets: frozenset[str]
    #: ``spec.rollout`` of its ConfigRefreshes (``refreshbus.io/rollout``), None: plain ones.
    rollout: dict[str, Any] | None = None

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
    rollout: dict[str, Any] | None = None
    if options.rollout is not None:
        rollout = {"steps": list(options.rollout)}
        if options.rollout_bake is not None:
            rollout["bakeSeconds"] = options.rollout_bake
    return Workload(
        uid=(body.get("metadata") or {}).get("uid"),
        configmaps=frozenset(options.configmaps),
        secrets=frozenset(options.secrets),
        rollout=rollout,
    )


def watch_key(source: SourceKey, scope: str) -> WatchKey:
    """The watch that covers ``source``. Secrets are always watched by name: a namespace-wide
    Secret watch would stream every Secret's values of the namespace into the operator."""
    ns, kind, _ = source
    return (ns, kind, None) if scope == "namespace" and kind == "ConfigMap" else source


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
    namespace: str,
    kind: str,
    name: str,
    uid: str | None,
    sources: list[SourceKey],
    hashes: Mapping[SourceKey, str] | None = None,
    rollout: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    annotations = {SOURCE_ANNOTATION: ",".join(f"{k}/{n}" for _, k, n in sources)}
    recorded = {f"{k}/{n}": h for (_, k, n), h in sorted((hashes or {}).items()) if k == "ConfigMap"}
    if recorded:
        annotations[HASHES_ANNOTATION] = json.dumps(recorded, sort_keys=True)
        annotations[RECORDED_AT_ANNOTATION] = f"{time.time():.6f}"
    meta: dict[str, Any] = {
        "generateName": f"{name[:50]}-auto-",
        "namespace": namespace,
        "labels": {AUTO_REFRESH_LABEL: label_value(name), KIND_LABEL: kind.lower()},
        "annotations": annotations,
    }
    if uid:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": False}
        ]
    spec_sources = [
        {"configMap": {"name": n}} if k == "ConfigMap" else {"secret": {"name": n}} for _, k, n in sources
    ]
    spec: dict[str, Any] = {"sources": spec_sources, "target": {"workload": {"kind": kind, "name": name}}}
    if rollout is not None:
        spec["rollout"] = dict(rollout)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}


def recorded_hashes(items: Sequence[Mapping[str, Any]]) -> Records:
    """Per workload, the ConfigMap hashes its newest auto-created ConfigRefresh was made for."""
    newest: dict[WorkloadKey, tuple[tuple[str, str], dict[SourceKey, str]]] = {}
    for item in items:
        meta = item.get("metadata") or {}
        target = ((item.get("spec") or {}).get("target") or {}).get("workload") or {}
        ns = meta.get("namespace", "")
        try:
            raw = json.loads((meta.get("annotations") or {}).get(HASHES_ANNOTATION) or "{}")
            entries = [(str(k).partition("/"), str(h)) for k, h in raw.items()]
        except (ValueError, AttributeError):
            continue  # not a record we can read: no baseline from it
        hashes = {(ns, kind, name): h for (kind, sep, name), h in entries if sep}
        wkey: WorkloadKey = (ns, str(target.get("kind", "")), str(target.get("name", "")))
        annotations = meta.get("annotations") or {}
        created = (str(meta.get("creationTimestamp", "")), str(annotations.get(RECORDED_AT_ANNOTATION, "")))
        if hashes and (wkey not in newest or created >= newest[wkey][0]):
            newest[wkey] = (created, hashes)
    return {w: h for w, (_, h) in newest.items()}


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
    """One watch (one API connection) and what it has seen: a content hash per object."""

    key: WatchKey
    task: asyncio.Task[None]
    #: Object name -> content hash (None: deleted); a name not in it was never seen.
    hashes: dict[str, str | None] = field(default_factory=dict)


class AutoRefresher:
    """Opted-in workloads in (from kopf handlers, on the loop), ConfigRefreshes out.

    Watches are asyncio tasks started and cancelled only by one supervisor task, which
    makes the running watches match the wanted ones whenever a workload event changes
    them: one watch per wanted key whatever the order or concurrency of the events, at most
    ``auto_refresh_max_watches``. :meth:`stop` cancels and awaits every task it owns;
    :meth:`start` resumes watching every workload known by then (kopf peering pauses and
    resumes a replica)."""

    def __init__(self, config: Config, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.workloads: dict[WorkloadKey, Workload] = {}
        self.watches: dict[WatchKey, SourceWatch] = {}
        #: Changed sources per workload: gathered until the workload's window ends (changed),
        #: then waiting for their ConfigRefresh to be created (due).
        self.changed: dict[WorkloadKey, set[SourceKey]] = {}
        self.due: dict[WorkloadKey, set[SourceKey]] = {}
        self._creating: set[WorkloadKey] = set()
        #: Per workload, the end of the window opened by its last refresh.
        self.timers: dict[WorkloadKey, asyncio.TimerHandle] = {}
        #: Every watch and ConfigRefresh-creating task, until it ends (stop awaits them all,
        #: including watches the supervisor is still cancelling).
        self._owned: set[asyncio.Task[Any]] = set()
        #: Per namespace, this run's one listing of the auto-created ConfigRefreshes' records.
        self._records: dict[str, asyncio.Task[Records]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._gc: asyncio.Task[None] | None = None
        self._wanted_changed = asyncio.Event()
        #: Whether the number of wanted watches is over the limit (logged on each change).
        self._over_limit = False
        #: Workloads already told that their Secrets are not watched (logged once each).
        self._secrets_unwatched: set[WorkloadKey] = set()

    def watched_sources(self, namespace: str, workload: Workload) -> set[SourceKey]:
        """The sources of ``workload`` this operator watches: Secrets only when allowed."""
        sources = workload.sources(namespace)
        if not self.config.auto_refresh_secrets:
            sources = {s for s in sources if s[1] != "Secret"}
        return sources

    # -- life ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._supervisor is not None

    async def start(self) -> None:
        """Start the supervisor (which starts a watch for every known workload) and the GC."""
        if self.running:
            return
        self._supervisor = asyncio.create_task(self._supervise(), name="refreshbus-auto-refresh-watches")
        self._gc = asyncio.create_task(self._gc_loop(), name="refreshbus-auto-refresh-gc")
        self._wanted_changed.set()

    async def stop(self) -> None:
        """Cancel and await every task: supervisor, GC, watches, pending creations. What the
        watches saw is dropped (a paused replica leaves changes to the active one); the
        workloads are kept for :meth:`start`."""
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.changed.clear()
        self.due.clear()
        self._records.clear()
        tasks = [t for t in (self._supervisor, self._gc) if t is not None] + list(self._owned)
        self._supervisor = self._gc = None
        self.watches.clear()
        await cancel_and_wait(tasks)
        self._publish_counts(0)

    def alive(self) -> bool:
        """False when the supervisor or the GC task ended while running (they never should)."""
        return all(t is None or not t.done() for t in (self._supervisor, self._gc))

    # -- workloads (from kopf event handlers, on the loop) -------------------------------------

    def workload_event(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: WorkloadKey = (meta.get("namespace", ""), kind, meta.get("name", ""))
        workload = None if event_type == "DELETED" or meta.get("deletionTimestamp") else opted_in(body)
        if workload is None:
            self._secrets_unwatched.discard(key)
            if self.workloads.pop(key, None) is not None:
                log.info("auto-refresh off for %s %s/%s", kind, key[0], key[2])
                self._wanted_changed.set()
            return
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
        if self.workloads.get(key) != workload:
            new = key not in self.workloads
            self.workloads[key] = workload
            self._wanted_changed.set()
            if new and self.running:
                self._check_records(key, workload)

    def wanted_sources(self) -> set[SourceKey]:
        wanted: set[SourceKey] = set()
        for (ns, _, _), workload in self.workloads.items():
            wanted |= self.watched_sources(ns, workload)
        return wanted

    # -- the supervisor: the only place watches start and stop ---------------------------------

    async def _supervise(self) -> None:
        while True:
            await self._wanted_changed.wait()
            self._wanted_changed.clear()
            await self._sync_watches()

    async def _sync_watches(self) -> None:
        sources = self.wanted_sources()
        scope = self.config.auto_refresh_watch_scope
        wanted = sorted({watch_key(s, scope) for s in sources}, key=lambda k: (k[0], k[1], k[2] or ""))
        limit = self.config.auto_refresh_max_watches
        over = len(wanted) > limit
        if over != self._over_limit:
            self._over_limit = over
            if over:
                log.warning(
                    "auto-refresh wants %d watches, more than auto_refresh_max_watches=%d: the "
                    "sources of %d of them are not watched (raise REFRESHBUS_OPERATOR_AUTO_REFRESH_"
                    "MAX_WATCHES, or refresh them with ConfigRefreshes)",
                    len(wanted),
                    limit,
                    len(wanted) - limit,
                )
            else:
                log.info("auto-refresh watches back under auto_refresh_max_watches=%d", limit)
        keep = set(wanted[:limit])
        await cancel_and_wait([self.watches.pop(k).task for k in list(self.watches) if k not in keep])
        for key in keep - set(self.watches):
            self.watches[key] = self._start_watch(key)
        unwatched = sum(1 for s in sources if watch_key(s, scope) not in keep)
        self._publish_counts(len(sources) - unwatched, unwatched)

    def _start_watch(self, key: WatchKey) -> SourceWatch:
        ns, kind, name = key
        # Never ends by itself (every error is retried): only the supervisor or stop() cancel it.
        task = asyncio.create_task(self._watch(key), name=f"refreshbus-watch-{kind}-{ns}/{name or '*'}")
        self._own(task)
        return SourceWatch(key, task)

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)

    def _publish_counts(self, watched: int, unwatched: int = 0) -> None:
        metrics.WATCHES.set(len(self.watches))
        metrics.WATCHED_SOURCES.set(watched)
        metrics.UNWATCHED_SOURCES.set(unwatched)

    # -- one watch (task) ----------------------------------------------------------------------

    async def _watch(self, key: WatchKey) -> None:
        ns, kind, name = key
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        path = f"/api/v1/namespaces/{q(ns)}/{plural}"
        selector = f"metadata.name={name}" if name is not None else None
        attempt = 0
        while True:
            try:
                records = await self._records_of(ns)
                listing = await self.kube.aget(path, fieldSelector=selector)
                self._listed(key, {
                    (i.get("metadata") or {}).get("name", ""): content_hash(kind, i)
                    for i in listing.get("items") or []
                }, records)
                rv = (listing.get("metadata") or {}).get("resourceVersion")
                while True:
                    query = {
                        "watch": "1",
                        "fieldSelector": selector,
                        "resourceVersion": rv,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": str(WATCH_SECONDS),
                    }
                    events = self.kube.astream(path, query, read_timeout=WATCH_SECONDS + 30)
                    async with contextlib.aclosing(events):
                        async for event in events:
                            etype, obj = event.get("type"), event.get("object") or {}
                            if etype == "ERROR":
                                raise ApiError(int(obj.get("code") or 500), "watch error", obj)
                            meta = obj.get("metadata") or {}
                            rv = meta.get("resourceVersion") or rv
                            if etype in ("ADDED", "MODIFIED"):
                                self._observed(key, meta.get("name", ""), content_hash(kind, obj), False)
                            elif etype == "DELETED":
                                self._observed(key, meta.get("name", ""), None, False)
                    attempt = 0
            except Exception as exc:
                delay = backoff(attempt, 0.5, 30.0)
                attempt += 1
                log.debug("watch of %s %s/%s restarts in %.1fs: %s", kind, ns, name or "*", delay, exc)
                await asyncio.sleep(delay)

    async def _records_of(self, namespace: str) -> Records:
        """What the newest auto-created ConfigRefresh of each workload in ``namespace`` was
        made for: listed once per run and namespace, shared by its watches."""
        task = self._records.get(namespace)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self._list_records(namespace))
            self._own(task)
            self._records[namespace] = task
        try:
            return await asyncio.shield(task)  # a cancelled watch must not cancel the others' listing
        except Exception as exc:
            log.warning(
                "auto-refresh: could not list the auto-created ConfigRefreshes of %s (%s): an edit made "
                "there while no replica watched is not refreshed until the next edit",
                namespace,
                exc,
            )
            return {}

    def _check_records(self, wkey: WorkloadKey, workload: Workload) -> None:
        """A workload first known after its sources were listed: compare them with its record."""
        task = self._records.get(wkey[0])
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return
        recorded = task.result().get(wkey, {})
        for source, digest in self._hashes(wkey[0], workload).items():
            if recorded.get(source, digest) != digest:
                log.info("%s %s/%s changed while it was not watched", source[1], source[0], source[2])
                self._schedule(wkey, source, at_once=False)

    async def _list_records(self, namespace: str) -> Records:
        listing = await self.kube.aget(cfr_path(namespace), labelSelector=AUTO_REFRESH_LABEL)
        return recorded_hashes(listing.get("items") or [])

    def _listed(self, key: WatchKey, digests: Mapping[str, str], records: Records) -> None:
        watch = self.watches.get(key)
        if watch is None:
            return
        unseen = set(digests) - set(watch.hashes)
        for name in set(watch.hashes) - set(digests):
            self._observed(key, name, None, True)  # deleted while the watch was down
        for name, digest in digests.items():
            self._observed(key, name, digest, True)
        # First sight in this run: compare with what the last auto refresh was made for, so an
        # edit made while no replica watched (a takeover, a restart) is still refreshed.
        for name in unseen:
            source: SourceKey = (key[0], key[1], name)
            for wkey in self._users(source):
                before = records.get(wkey, {}).get(source)
                if before is not None and before != digests[name]:
                    log.info("%s %s/%s changed while it was not watched", key[1], key[0], name)
                    # Maybe the edit the replica stepping down is still creating the
                    # ConfigRefresh of: after a window, that create has landed and is found.
                    self._schedule(wkey, source, at_once=False)

    def _users(self, source: SourceKey) -> list[WorkloadKey]:
        ns = source[0]
        return [k for k, w in self.workloads.items() if k[0] == ns and source in self.watched_sources(ns, w)]

    def _schedule(self, wkey: WorkloadKey, source: SourceKey, *, at_once: bool = True) -> None:
        """Refresh ``wkey`` for ``source``: at once, unless its window is open (gathered until
        it ends) or not ``at_once`` (a window opens first)."""
        now_ = at_once and wkey not in self.timers
        log.info(
            "%s %s/%s changed: refresh of %s %s %s",
            source[1],
            source[0],
            source[2],
            wkey[1],
            wkey[2],
            "now" if now_ else "at the end of its window",
        )
        self.changed.setdefault(wkey, set()).add(source)
        if now_:
            self._fire(wkey)
        elif wkey not in self.timers:
            loop = asyncio.get_running_loop()
            self.timers[wkey] = loop.call_later(self.config.auto_refresh_debounce, self._fire, wkey)

    def _observed(self, key: WatchKey, name: str, digest: str | None, initial: bool) -> None:
        watch = self.watches.get(key)
        if watch is None:
            return  # a cancelled watch's last event
        seen = name in watch.hashes
        previous = watch.hashes.get(name)
        watch.hashes[name] = digest
        if not seen or digest is None or (initial and previous is None):
            return  # first sight (baseline), deletion, or the object appeared after a re-list
        ns, kind = key[0], key[1]
        source: SourceKey = (ns, kind, name)
        users = self._users(source)
        if not users:
            return  # another object of a namespace-wide watch
        if digest == previous:
            if not initial:
                metrics.SOURCE_UPDATES.labels(update="metadata").inc()
                log.debug("%s %s/%s: metadata-only update, nothing to refresh", kind, ns, name)
            return
        metrics.SOURCE_UPDATES.labels(update="content").inc()
        for wkey in users:
            self._schedule(wkey, source)

    def _fire(self, wkey: WorkloadKey) -> None:
        """Refresh what changed and open a window: changes within it wait for its end (one
        ConfigRefresh for a burst of edits); a window that ends with none closes."""
        self.timers.pop(wkey, None)
        sources = self.changed.pop(wkey, set())
        if not sources or wkey not in self.workloads or not self.running:
            return
        loop = asyncio.get_running_loop()
        self.timers[wkey] = loop.call_later(self.config.auto_refresh_debounce, self._fire, wkey)
        self.due.setdefault(wkey, set()).update(sources)
        if wkey not in self._creating:
            self._creating.add(wkey)
            self._own(asyncio.create_task(self._create(wkey)))

    async def _create(self, wkey: WorkloadKey) -> None:
        """Create ConfigRefreshes for ``wkey`` until no change is due: a failure is retried
        for as long as the workload opts in (an API server outage must not lose an edit);
        changes that come due during a create get a ConfigRefresh of their own after it."""
        ns, kind, name = wkey
        attempt = 0
        try:
            while wkey in self.due:
                workload = self.workloads.get(wkey)
                if workload is None:
                    self.due.pop(wkey, None)
                    return
                sources = self.due.pop(wkey)
                try:
                    hashes = self._hashes(ns, workload)
                    if await self._already_requested(wkey, sources, hashes):
                        continue
                    created = [await self.kube.apost(cfr_path(ns), body)
                               for body in await self._manifests(wkey, workload, sources, hashes)]
                except Exception as exc:
                    self.due.setdefault(wkey, set()).update(sources)
                    delay = backoff(attempt, 0.5, 30.0)
                    attempt += 1
                    log.warning(
                        "auto-refresh: could not create a ConfigRefresh for %s %s/%s (retrying in %.1fs): %s",
                        kind,
                        ns,
                        name,
                        delay,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                for made in created:
                    metrics.AUTO_REFRESHES.inc()
                    log.info("auto-refresh: created ConfigRefresh %s/%s for %s %s",
                             ns, made["metadata"]["name"], kind, name)
        finally:
            self._creating.discard(wkey)

    async def _manifests(
        self, wkey: WorkloadKey, workload: Workload, sources: set[SourceKey], hashes: Mapping[SourceKey, str]
    ) -> list[dict[str, Any]]:
        """The ConfigRefreshes for ``sources``: one, or for a versioned workload a rollout of
        its ConfigMaps (unless they hold a content that was rolled back) and a plain one for
        its Secrets."""
        ns, kind, name = wkey
        if workload.rollout is None:
            return [refresh_manifest(ns, kind, name, workload.uid, sorted(sources), hashes)]
        configmaps = sorted(s for s in sources if s[1] == "ConfigMap")
        secrets = sorted(s for s in sources if s[1] != "ConfigMap")
        bodies = [refresh_manifest(ns, kind, name, workload.uid, secrets)] if secrets else []
        if configmaps:
            rejected = await rs.rejected_live(self.kube, ns, kind, name, sorted(workload.configmaps))
            if rejected is None:
                bodies.insert(0, refresh_manifest(
                    ns, kind, name, workload.uid, configmaps, hashes, rollout=workload.rollout))
            else:
                log.info(
                    "auto-refresh: %s %s/%s: its ConfigMaps hold the content of revision %d, which was "
                    "rolled back (%s): not rolling it out again; a new edit will be",
                    kind, ns, name, rejected.revision, rejected.reason,
                )
        return bodies

    async def _already_requested(
        self, wkey: WorkloadKey, sources: set[SourceKey], hashes: Mapping[SourceKey, str]
    ) -> bool:
        """Whether the workload's newest auto-created ConfigRefresh was made for exactly this
        content. During a takeover the replica stepping down may still create the one for an
        edit that the replica taking over also saw (its create was on the wire when it was
        paused): one ConfigRefresh per edit, not two. Only ConfigMap changes can be matched
        (a Secret's hash is never recorded), so a change that includes a Secret is always sent."""
        if any(kind != "ConfigMap" for _, kind, _ in sources):
            return False
        ns, kind, name = wkey
        selector = f"{AUTO_REFRESH_LABEL}={label_value(name)},{KIND_LABEL}={kind.lower()}"
        try:
            listing = await self.kube.aget(cfr_path(ns), labelSelector=selector)
        except Exception as exc:
            # Better a second ConfigRefresh (answered `unchanged`) than a lost edit.
            log.warning("auto-refresh: could not check %s %s/%s for an existing ConfigRefresh (%s); "
                        "creating one", kind, ns, name, exc)
            return False
        recorded = recorded_hashes(listing.get("items") or []).get(wkey)
        wanted = {s: h for s, h in hashes.items() if s[1] == "ConfigMap"}
        if not recorded or recorded != wanted:
            return False
        log.info("auto-refresh: %s %s/%s already has a ConfigRefresh for this content (another "
                 "replica made it during a takeover); not creating a second one", kind, ns, name)
        return True

    def _hashes(self, namespace: str, workload: Workload) -> dict[SourceKey, str]:
        """The current content hash of each of the workload's watched sources, where known."""
        scope = self.config.auto_refresh_watch_scope
        hashes: dict[SourceKey, str] = {}
        for source in self.watched_sources(namespace, workload):
            watch = self.watches.get(watch_key(source, scope))
            digest = watch.hashes.get(source[2]) if watch is not None else None
            if digest is not None:
                hashes[source] = digest
        return hashes

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
