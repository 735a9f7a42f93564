"""The operator's side of a workload's release record (issue 13): the one writer of it.

A versioned workload (its pod template carries ``refreshbus.io/rollout``) has a record
ConfigMap (:func:`refreshbus_wire.release.record_name`) saying which content of its
ConfigMaps is accepted, which candidate is being rolled out to which pods, and which
contents were rejected; every sidecar of the workload follows it. The format, the file ids
and the hashes are the wire's (:mod:`refreshbus_wire.release`); this module reads the
live ConfigMaps, changes the record and writes it back.

Every change is a read-modify-write with the record's ``resourceVersion``: a writer that
lost a race (409) reads again and re-applies its change to what the winner wrote, so two
replicas or two rollouts never lose each other's updates. A record that would pass the
API server's 1 MiB limit is never written: :class:`RecordTooLargeError` says why, and the record
is left as it was.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from refreshbus_wire import contract
from refreshbus_wire import release as wire
from refreshbus_wire.hashing import UndecodableError, object_files
from refreshbus_wire.release import Accepted, Candidate, Rejected, Release, ReleaseRecord, Revision

from refreshbus_operator.kube import ApiError, Kube, q, source_path, workload_path
from refreshbus_operator.sidecar_rbac import WORKLOAD_KINDS, label_value, owner_reference

log = logging.getLogger(__name__)

MANAGED_BY: Final = {
    "app.kubernetes.io/managed-by": "refreshbus-operator",
    "app.kubernetes.io/component": wire.LABEL_COMPONENT_VALUE,
}
#: Attempts of one change against concurrent writers before :class:`ContendedError` is raised.
MAX_ATTEMPTS: Final = 20

#: File contents a record needs: source hash -> {key: bytes}.
Contents = Mapping[str, Mapping[str, bytes]]
#: A change: the record as read -> the release to write and the contents it needs, or None
#: when nothing is to be written.
Change = Callable[[ReleaseRecord], tuple[Release, Contents] | None]


class ReleaseError(Exception):
    """The record could not be used or changed; ``reason`` is a condition/Event reason and
    the text is meant for the user."""

    reason = "ReleaseError"


class NotVersionedError(ReleaseError):
    """The workload has no release record (its template does not carry refreshbus.io/rollout)."""

    reason = "NotVersioned"


class StaleRevisionError(ReleaseError):
    """The revision named is not the record's candidate (any more)."""

    reason = "StaleRevision"


class RecordTooLargeError(ReleaseError):
    """The record would pass the API server's 1 MiB limit on a ConfigMap; nothing was written."""

    reason = "RecordTooLarge"


class RecordInvalidError(ReleaseError):
    """The record exists but cannot be read (edited by hand, or a newer format)."""

    reason = "RecordInvalid"


class AlreadyRejectedError(ReleaseError):
    """The content was rolled out by this refresh before and rejected."""

    reason = "AlreadyRejected"


class ConfigMapMissingError(ReleaseError):
    """A ConfigMap the workload manages does not exist yet: its record waits for it."""

    reason = "ConfigMapNotFound"


class ContendedError(ReleaseError):
    """Other writers won every one of :data:`MAX_ATTEMPTS` attempts."""

    reason = "RecordContended"


def _path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{q(namespace)}/configmaps"
    return base if name is None else f"{base}/{q(name)}"


def _record_path(namespace: str, kind: str, name: str) -> str:
    return _path(namespace, wire.record_name(kind, name))


def _now() -> datetime:
    return datetime.now(UTC)


def _decode(configmap: Mapping[str, Any]) -> ReleaseRecord:
    try:
        return wire.decode_record(configmap)
    except wire.RecordError as exc:
        raise RecordInvalidError(str(exc)) from None


def _encode(release: Release, contents: Contents) -> dict[str, dict[str, str]]:
    try:
        return wire.encode_record(release, contents)
    except wire.RecordTooLargeError as exc:
        raise RecordTooLargeError(
            f"{exc}; nothing was changed: keep the workload's ConfigMaps smaller (the record holds the "
            "accepted and the candidate content of each) or remove refreshbus.io/rollout"
        ) from None


# -- reading -------------------------------------------------------------------------------


async def read_record(kube: Kube, namespace: str, kind: str, name: str) -> ReleaseRecord | None:
    """The decoded record with its files, or None when the workload has none."""
    try:
        configmap = await kube.aget(_record_path(namespace, kind, name))
    except ApiError as exc:
        if exc.not_found:
            return None
        raise
    return _decode(configmap)


async def read(kube: Kube, namespace: str, kind: str, name: str) -> Release | None:
    """The workload's release, or None when it is not versioned."""
    record = await read_record(kube, namespace, kind, name)
    return None if record is None else record.release


async def live_contents(kube: Kube, namespace: str, configmaps: Iterable[str]) -> dict[str, dict[str, bytes]]:
    """The current content of each ConfigMap that exists: source key -> {key: bytes}. A missing
    one is left out: no revision names it, so sidecars fetch it live as without a record."""
    found: dict[str, dict[str, bytes]] = {}
    for cm in configmaps:
        try:
            configmap = await kube.aget(source_path(namespace, wire.VERSIONED_KIND, cm))
        except ApiError as exc:
            if exc.not_found:
                log.info("ConfigMap %s/%s does not exist: not versioned until it does", namespace, cm)
                continue
            raise
        try:  # decoded as the sidecar decodes it, or the hashes would differ
            files = object_files(configmap, wire.VERSIONED_KIND)
        except UndecodableError as exc:
            raise ReleaseError(f"ConfigMap key {exc.key!r}: binaryData is not base64") from None
        found[wire.source_key(wire.VERSIONED_KIND, cm)] = files
    return found


def _revision(number: int, live: Contents) -> tuple[Revision, dict[str, dict[str, bytes]]]:
    sources = {}
    contents: dict[str, dict[str, bytes]] = {}
    for skey, files in live.items():
        kind, cm = wire.parse_source_key(skey)
        version = wire.snapshot(kind, cm, files)
        sources[skey] = version
        contents[version.hash] = dict(files)
    return Revision(number, sources), contents


async def rejected_live(
    kube: Kube, namespace: str, kind: str, name: str, configmaps: Iterable[str]
) -> Rejected | None:
    """The rejected revision whose content ``configmaps`` hold now, if any (auto-refresh never
    rolls it out again: the edit that made it was rolled back). The ConfigMaps are read only
    when the record rejected something."""
    release = await read(kube, namespace, kind, name)
    if release is None or not release.rejected:
        return None
    live, _ = _revision(0, await live_contents(kube, namespace, configmaps))
    return next((r for r in release.rejected if dict(r.sources) == live.hashes()), None)


def versioned_configmaps(workload: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The ConfigMaps a workload's template manages when it carries ``refreshbus.io/rollout``,
    else None (not versioned; also when the webhook would refuse its pods)."""
    template = ((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}
    try:
        options = contract.parse_annotations(template.get("annotations") or {})
    except contract.ContractError:
        return None
    return options.configmaps if options.rollout is not None else None


async def _managed(
    kube: Kube, namespace: str, kind: str, name: str, record: ReleaseRecord
) -> tuple[str, ...]:
    """The ConfigMaps a new revision snapshots: the template's, else (gone, or no longer
    versioned while a rollout finishes) those of the accepted revision."""
    try:
        workload = await kube.aget(workload_path(namespace, kind, name))
    except ApiError as exc:
        if not exc.not_found:
            raise
        workload = {}
    names = versioned_configmaps(workload)
    if names is None:
        names = tuple(wire.parse_source_key(s)[1] for s in sorted(record.release.accepted.sources))
    return names


# -- writing -------------------------------------------------------------------------------


def _body(namespace: str, workload: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    meta = workload["metadata"]
    kind, name = workload["kind"], meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": wire.record_name(kind, name),
            "namespace": namespace,
            "labels": {
                **MANAGED_BY,
                wire.LABEL_WORKLOAD_KIND: kind,
                wire.LABEL_WORKLOAD_NAME: label_value(name),
            },
            "ownerReferences": [owner_reference(workload)],
        },
        **data,
    }


async def ensure(kube: Kube, workload: Mapping[str, Any]) -> Release | None:
    """Create the record of a workload whose template carries ``refreshbus.io/rollout``:
    revision 1 = its ConfigMaps' content now (kept before any edit: the content a rollback
    goes back to). An existing record of this workload is returned untouched; one left by a
    deleted workload of the same name (another uid) is replaced. None: not versioned.

    Raises:
        ConfigMapMissingError: a managed ConfigMap does not exist yet. The record waits for
            all of them: one created without it would let that ConfigMap's first edit reach
            every pod (no revision would name it, so sidecars would read it live).
        RecordTooLargeError: the ConfigMaps are too large to be kept in a record.
    """
    configmaps = versioned_configmaps(workload)
    if configmaps is None:
        return None
    meta = workload["metadata"]
    namespace, kind, name, uid = meta["namespace"], workload["kind"], meta["name"], meta["uid"]
    path = _record_path(namespace, kind, name)
    while True:
        try:
            existing = await kube.aget(path)
        except ApiError as exc:
            if not exc.not_found:
                raise
        else:
            owners = {o.get("uid") for o in (existing.get("metadata") or {}).get("ownerReferences") or []}
            if uid in owners:
                return _decode(existing).release
            log.info("release record %s/%s belongs to a deleted %s of that name: replacing it",
                     namespace, existing["metadata"]["name"], kind)
            await _delete(kube, path, existing["metadata"]["uid"])
        live = await live_contents(kube, namespace, configmaps)
        missing = [cm for cm in configmaps if wire.source_key(wire.VERSIONED_KIND, cm) not in live]
        if missing:
            raise ConfigMapMissingError(
                f"the release record of {kind} {name} waits for its ConfigMap(s) {', '.join(missing)}: "
                "it keeps their content before any edit, so it is made once they all exist")
        accepted, contents = _revision(1, live)
        release = Release(kind=kind, name=name, accepted=accepted,
                          history=(Accepted(1, accepted.hashes(), _now()),))
        body = _body(namespace, workload, _encode(release, contents))
        try:
            await kube.apost(_path(namespace), body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            continue  # another replica created it meanwhile: read theirs
        log.info("release record %s/%s created: revision 1 = %s", namespace, body["metadata"]["name"],
                 ", ".join(sorted(accepted.sources)))
        return release


async def _delete(kube: Kube, path: str, uid: str) -> None:
    """Delete exactly that object (not one recreated meanwhile under its name)."""
    try:
        await kube.arequest("DELETE", path, body={"preconditions": {"uid": uid}})
    except ApiError as exc:
        if not (exc.not_found or exc.conflict):
            raise


async def forget(kube: Kube, namespace: str, kind: str, name: str) -> bool:
    """Delete the workload's record (it went, or stopped carrying ``refreshbus.io/rollout``:
    its sidecars then follow the live ConfigMaps again). True if there was one."""
    try:
        await kube.adelete(_record_path(namespace, kind, name))
    except ApiError as exc:
        if exc.not_found:
            return False
        raise
    log.info("release record of %s %s/%s deleted", kind, namespace, name)
    return True


async def _update(kube: Kube, namespace: str, kind: str, name: str, change: Change) -> Release:
    """Apply ``change`` to the current record and write it with its resourceVersion; on a
    conflict read the winner's record and apply it again."""
    path = _record_path(namespace, kind, name)
    for attempt in range(MAX_ATTEMPTS):
        try:
            current = await kube.aget(path)
        except ApiError as exc:
            if exc.not_found:
                raise NotVersionedError(
                    f"{kind} {name} has no release record: it is not versioned (give its pod template "
                    "the annotation refreshbus.io/rollout, e.g. \"1,25%,100%\")"
                ) from None
            raise
        record = _decode(current)
        changed = change(record)
        if changed is None:
            return record.release
        release, contents = changed
        body = {**current, **_encode(release, contents)}
        try:
            await kube.aput(path, body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            # Another writer won; a short random pause keeps two losers from colliding again.
            await asyncio.sleep(random.uniform(0, 0.05 * (attempt + 1)))
            continue
        return release
    raise ContendedError(
        f"the release record of {kind} {name} kept changing under {MAX_ATTEMPTS} attempts to write it")


def _candidate_of(record: ReleaseRecord, revision: int, what: str) -> Candidate:
    candidate = record.release.candidate
    if candidate is None or candidate.revision != revision:
        now_ = "none" if candidate is None else f"revision {candidate.revision} ({candidate.refresh})"
        raise StaleRevisionError(
            f"cannot {what} revision {revision}: it is not the candidate (the candidate is {now_})")
    return candidate


async def propose(kube: Kube, namespace: str, kind: str, name: str, refresh: str) -> int:
    """The workload's ConfigMaps' live content becomes the candidate of ``refresh``, on no pod
    yet; returns its revision (the newest the record ever knew + 1).

    A candidate of the same refresh is kept as it is (a resumed rollout gets its revision
    back); one of the same content is handed over to ``refresh`` with its pods; any other
    candidate is replaced (its rollout is superseded). Live content that is the accepted
    one: nothing to roll out, the accepted revision is returned (a candidate is dropped).

    Raises:
        NotVersionedError: no record.
        AlreadyRejectedError: ``refresh`` rolled this content out before and it was rejected.
        RecordTooLargeError: the candidate does not fit in the record.
    """
    record = await read_record(kube, namespace, kind, name)
    if record is None:
        raise NotVersionedError(f"{kind} {name} has no release record: roll out needs refreshbus.io/rollout "
                           "on its pod template (the record must keep the content before the edit)")
    live = await live_contents(kube, namespace, await _managed(kube, namespace, kind, name, record))
    number = 0

    def change(record: ReleaseRecord) -> tuple[Release, Contents] | None:
        nonlocal number
        release = record.release
        old = release.candidate
        fresh, contents = _revision(release.latest_revision + 1, live)
        if old is not None and (old.refresh == refresh or old.hashes() == fresh.hashes()):
            number = old.revision
            if old.refresh == refresh:
                return None
            return replace(release, candidate=replace(old, refresh=refresh)), record.contents()
        for gone in release.rejected:
            if gone.refresh == refresh and gone.sources == fresh.hashes():
                raise AlreadyRejectedError(
                    f"{refresh} rolled this content out as revision {gone.revision} and it was rejected: "
                    f"{gone.reason}")
        if fresh.hashes() == release.accepted.hashes():
            number = release.accepted.revision
            return None if old is None else (replace(release, candidate=None), record.contents())
        number = fresh.revision
        candidate = Candidate(fresh.revision, fresh.sources, pods=(), refresh=refresh)
        return replace(release, candidate=candidate), {**record.contents(), **contents}

    await _update(kube, namespace, kind, name, change)
    return number


async def move(kube: Kube, namespace: str, kind: str, name: str, revision: int, pods: Sequence[str]) -> None:
    """Add ``pods`` to the candidate's pods: from now on they run ``revision``."""

    def change(record: ReleaseRecord) -> tuple[Release, Contents] | None:
        candidate = _candidate_of(record, revision, "move pods to")
        added = tuple(p for p in dict.fromkeys(pods) if p not in candidate.pods)
        if not added:
            return None
        moved = replace(candidate, pods=(*candidate.pods, *added))
        return replace(record.release, candidate=moved), record.contents()

    await _update(kube, namespace, kind, name, change)


async def promote(kube: Kube, namespace: str, kind: str, name: str, revision: int) -> None:
    """The candidate ``revision`` becomes the accepted one, for every pod."""

    def change(record: ReleaseRecord) -> tuple[Release, Contents] | None:
        release = record.release
        if release.accepted.revision == revision:
            return None
        candidate = _candidate_of(record, revision, "promote")
        accepted = Revision(candidate.revision, candidate.sources)
        entry = Accepted(revision, candidate.hashes(), _now(), refresh=candidate.refresh)
        promoted = replace(release, accepted=accepted, candidate=None, history=(entry, *release.history))
        return promoted, record.contents()

    await _update(kube, namespace, kind, name, change)


async def reject(kube: Kube, namespace: str, kind: str, name: str, revision: int, reason: str) -> list[str]:
    """The candidate ``revision`` failed: every pod goes back to the accepted revision, and
    its content is listed as rejected (auto-refresh never rolls it out again). Returns the
    pods that had moved to it, which must be told to go back."""
    moved: list[str] = []

    def change(record: ReleaseRecord) -> tuple[Release, Contents] | None:
        nonlocal moved
        release = record.release
        if any(r.revision == revision for r in release.rejected):
            moved = []
            return None
        candidate = _candidate_of(record, revision, "reject")
        moved = list(candidate.pods)
        entry = Rejected(revision, candidate.hashes(), reason=reason, at=_now(), refresh=candidate.refresh)
        rejected = replace(release, candidate=None, rejected=(entry, *release.rejected))
        return rejected, record.contents()

    await _update(kube, namespace, kind, name, change)
    return moved


async def accept_live(kube: Kube, namespace: str, kind: str, name: str, refresh: str) -> int:
    """A refresh without rollout on a versioned workload: the ConfigMaps' live content becomes
    the accepted revision (every pod moves to it; a candidate in flight is dropped). Returns
    the accepted revision: the current one, without a write, when the content is unchanged."""
    record = await read_record(kube, namespace, kind, name)
    if record is None:
        raise NotVersionedError(f"{kind} {name} has no release record")
    live = await live_contents(kube, namespace, await _managed(kube, namespace, kind, name, record))

    def change(record: ReleaseRecord) -> tuple[Release, Contents] | None:
        release = record.release
        fresh, contents = _revision(release.latest_revision + 1, live)
        if fresh.hashes() == release.accepted.hashes():
            if release.candidate is None:
                return None
            return replace(release, candidate=None), record.contents()
        entry = Accepted(fresh.revision, fresh.hashes(), _now(), refresh=refresh)
        accepted = replace(release, accepted=fresh, candidate=None, history=(entry, *release.history))
        return accepted, contents

    return (await _update(kube, namespace, kind, name, change)).accepted.revision


# -- following the workloads -----------------------------------------------------------------

WorkloadKey = tuple[str, str, str]  # namespace, kind, name


class Keeper:
    """Workload events in (next to the sidecar RBAC reconcile), records created or deleted.

    A workload whose template starts carrying ``refreshbus.io/rollout`` gets its record at
    once, before any edit of its ConfigMaps, or there would be nothing to roll back to. A
    workload that stops carrying it (or goes) loses it: its sidecars follow the live
    ConfigMaps again. Each workload (uid) is ensured once per run; the many status-only
    updates of a Deployment cost no request. A template that was never versioned in this
    run costs none either, so a record left by a workload that dropped the annotation while
    no operator ran stays until the workload goes (its ownerReference)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        #: Workload -> uid whose record is ensured, or None: seen without the annotation.
        self._seen: dict[WorkloadKey, str | None] = {}

    async def handle(self, event_type: str | None, workload: Mapping[str, Any]) -> str:
        """"ensured", "removed", "unchanged" or "absent".

        Raises:
            ReleaseError: the record cannot be created (e.g. too large); asked again at the
                workload's next event.
        """
        meta = workload.get("metadata") or {}
        kind = workload.get("kind")
        if not meta.get("name") or kind not in WORKLOAD_KINDS:
            return "absent"
        key: WorkloadKey = (meta["namespace"], kind, meta["name"])
        previous = self._seen.get(key)
        if event_type == "DELETED" or versioned_configmaps(workload) is None:
            if event_type == "DELETED":
                self._seen.pop(key, None)
            else:
                self._seen[key] = None
            if previous is not None and await forget(self.kube, *key):
                return "removed"
            return "absent"
        uid = meta.get("uid")
        if previous == uid:
            return "unchanged"
        await ensure(self.kube, workload)
        self._seen[key] = uid
        return "ensured"
