"""The release record: which content of its ConfigMaps each pod of a workload runs.

A per-workload ConfigMap, written only by the operator, read by every sidecar of the
workload (docs/protocol.md, "The release record", is the contract for other tools):

* name :func:`record_name`, in the workload's namespace;
* ``data["release.json"]``: the :class:`Release` as JSON (format ``"v": 1``);
* ``binaryData[<file id>]``: the bytes of one key of one source at one version, the file
  id being :func:`file_id` of the source's hash and the key's index in its sorted keys.
  Only the accepted and the candidate revisions' files are kept.

:func:`decode_record` refuses anything it cannot fully trust with a :class:`RecordError`
that says why, so a sidecar never applies half of a record: files whose bytes do not hash
to the recorded source hash, a missing file, a Secret (its values must never be copied
into a ConfigMap), a newer format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from refreshbus_wire.contract import is_key, is_name
from refreshbus_wire.events import parse_timestamp
from refreshbus_wire.hashing import content_hash

#: The ``v`` this build reads and writes; a record with another one is refused.
RECORD_FORMAT: Final = 1
RECORD_KEY: Final = "release.json"
RECORD_PREFIX: Final = "refreshbus-release-"
#: The API server's limit on a ConfigMap's data + binaryData (values, decoded).
MAX_RECORD_BYTES: Final = 1024 * 1024
#: Entries kept in ``rejected`` and in ``history`` (newest first).
HISTORY_LIMIT: Final = 10
#: The only kind of source a record versions: the operator never reads Secret values.
VERSIONED_KIND: Final = "ConfigMap"
#: The workloads that can have a record (a bare Pod or ReplicaSet never has one).
VERSIONED_WORKLOAD_KINDS: Final = ("Deployment", "StatefulSet", "DaemonSet")

LABEL_COMPONENT_VALUE: Final = "release"
LABEL_WORKLOAD_KIND: Final = "refreshbus.io/workload-kind"
LABEL_WORKLOAD_NAME: Final = "refreshbus.io/workload-name"

_MAX_NAME: Final = 253
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_FILE_ID_RE = re.compile(r"^[0-9a-f]{16}-[0-9]{1,6}$")
_MAX_REVISION: Final = 2**53  # stays exact in every JSON reader


class RecordError(ValueError):
    """A release record that cannot be used (or written); the text says why."""


class RecordTooLargeError(RecordError):
    """The encoded record would pass the API server's 1 MiB limit on a ConfigMap."""


def record_name(kind: str, name: str) -> str:
    """The record's ConfigMap name for a workload, e.g. ``refreshbus-release-deployment-web``.

    Names that would pass 253 characters are cut and suffixed with a hash of the full
    name, so two long workload names never share a record."""
    full = f"{RECORD_PREFIX}{kind.lower()}-{name}"
    if len(full) <= _MAX_NAME:
        return full
    suffix = hashlib.sha256(full.encode()).hexdigest()[:10]
    return full[: _MAX_NAME - len(suffix) - 1].rstrip("-.") + "-" + suffix


def file_id(source_hash: str, index: int) -> str:
    """The ``binaryData`` key of one file: the first 16 hex digits of its source's hash
    and the index of its key in the source's sorted keys."""
    if not _HASH_RE.match(source_hash):
        raise RecordError(f"not a source hash: {source_hash!r}")
    return f"{source_hash[7:23]}-{index}"


def source_key(kind: str, name: str) -> str:
    """How a record names a source: ``ConfigMap/<name>``."""
    return f"{kind}/{name}"


def parse_source_key(key: str) -> tuple[str, str]:
    """``ConfigMap/<name>`` -> (kind, name); only ConfigMaps are versioned."""
    kind, sep, name = key.partition("/")
    if not sep or kind != VERSIONED_KIND or not is_name(name):
        raise RecordError(f"source {key!r} is not ConfigMap/<name> (only ConfigMaps are versioned)")
    return kind, name


# -- the record's model --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceVersion:
    """One source at one version: its content hash and the file id of each key."""

    hash: str
    files: Mapping[str, str]  # key -> file id

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "files": dict(sorted(self.files.items()))}


def snapshot(kind: str, name: str, files: Mapping[str, bytes]) -> SourceVersion:
    """The version of a source holding ``files`` (what the operator records)."""
    digest = content_hash(kind, name, files)
    return SourceVersion(digest, {key: file_id(digest, i) for i, key in enumerate(sorted(files))})


@dataclass(frozen=True, slots=True)
class Revision:
    """A numbered set of source versions: what a pod runs."""

    revision: int
    sources: Mapping[str, SourceVersion]  # source_key() -> version

    def hashes(self) -> dict[str, str]:
        return {key: version.hash for key, version in self.sources.items()}

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision,
                "sources": {key: self.sources[key].to_json() for key in sorted(self.sources)}}


@dataclass(frozen=True, slots=True)
class Candidate(Revision):
    """The revision being rolled out, to the pods listed (by name) so far."""

    pods: tuple[str, ...] = ()
    refresh: str | None = None  # the ConfigRefresh rolling it out

    def to_json(self) -> dict[str, Any]:
        out = Revision.to_json(self)
        out.update(pods=list(self.pods), refresh=self.refresh)
        return out


@dataclass(frozen=True, slots=True)
class Rejected:
    """A candidate that failed its gates (hashes only: its files are not kept)."""

    revision: int
    sources: Mapping[str, str]  # source_key() -> hash
    reason: str
    at: datetime
    refresh: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "sources": dict(sorted(self.sources.items())),
                "refresh": self.refresh, "reason": self.reason, "at": _fmt_time(self.at)}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A history entry: a revision that was accepted once (hashes only)."""

    revision: int
    sources: Mapping[str, str]  # source_key() -> hash
    accepted_at: datetime
    refresh: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "sources": dict(sorted(self.sources.items())),
                "refresh": self.refresh, "acceptedAt": _fmt_time(self.accepted_at)}


@dataclass(frozen=True, slots=True)
class Release:
    """The content of ``release.json``. ``rejected`` and ``history``: newest first."""

    kind: str  # the workload's kind, e.g. "Deployment"
    name: str  # the workload's name
    accepted: Revision
    candidate: Candidate | None = None
    rejected: tuple[Rejected, ...] = ()
    history: tuple[Accepted, ...] = ()

    def revision_for(self, pod: str) -> Revision:
        """What pod ``pod`` runs: the candidate once it is listed in it, else the accepted one."""
        if self.candidate is not None and pod in self.candidate.pods:
            return self.candidate
        return self.accepted

    @property
    def latest_revision(self) -> int:
        """The highest revision number the record knows (the next one is this + 1)."""
        numbers = [self.accepted.revision, *(e.revision for e in self.rejected),
                   *(e.revision for e in self.history)]
        if self.candidate is not None:
            numbers.append(self.candidate.revision)
        return max(numbers)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": RECORD_FORMAT,
            "workload": {"kind": self.kind, "name": self.name},
            "accepted": self.accepted.to_json(),
            "candidate": None if self.candidate is None else self.candidate.to_json(),
            "rejected": [e.to_json() for e in self.rejected[:HISTORY_LIMIT]],
            "history": [e.to_json() for e in self.history[:HISTORY_LIMIT]],
        }

    @classmethod
    def from_json(cls, data: Any) -> Release:
        obj = _obj(data, "release.json")
        if obj.get("v") != RECORD_FORMAT:
            raise RecordError(
                f"release.json: format v={obj.get('v')!r}, this build reads v={RECORD_FORMAT} only")
        workload = _obj(obj.get("workload"), "workload")
        candidate = obj.get("candidate")
        return cls(
            kind=_str(workload, "kind", "workload"),
            name=_name(workload, "name", "workload"),
            accepted=_revision(obj.get("accepted"), "accepted"),
            candidate=None if candidate is None else _candidate(candidate),
            rejected=tuple(_rejected(e, i) for i, e in enumerate(_list(obj.get("rejected", []), "rejected"))),
            history=tuple(_accepted(e, i) for i, e in enumerate(_list(obj.get("history", []), "history"))),
        )


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """A decoded record ConfigMap: the release and the files it keeps (file id -> bytes)."""

    release: Release
    blobs: Mapping[str, bytes] = field(repr=False)
    resource_version: str | None = None

    def files(self, revision: Revision) -> dict[str, dict[str, bytes]]:
        """The content of every source of ``revision`` (one of this record's): source key -> {key: bytes}."""
        return {skey: {key: self.blobs[fid] for key, fid in version.files.items()}
                for skey, version in revision.sources.items()}

    def contents(self) -> dict[str, dict[str, bytes]]:
        """Every source version this record keeps files for: source hash -> {key: bytes}
        (what :func:`encode_record` needs back, plus any new content)."""
        out: dict[str, dict[str, bytes]] = {}
        for revision in _kept(self.release):
            for version in revision.sources.values():
                out[version.hash] = {key: self.blobs[fid] for key, fid in version.files.items()}
        return out


def encode_record(release: Release, contents: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, str]]:
    """The record ConfigMap's ``data`` and ``binaryData`` (``{"data": ..., "binaryData": ...}``).

    ``contents``: source hash -> {key: bytes}, for at least every source version of the
    accepted and candidate revisions; only those are written (older files are dropped).

    Raises:
        RecordTooLargeError: the ConfigMap would pass :data:`MAX_RECORD_BYTES`.
        RecordError: a Secret source, content missing, or content that does not hash to
            (or is not filed as) its source version.
    """
    blobs: dict[str, str] = {}
    for revision in _kept(release):
        for skey, version in revision.sources.items():
            kind, name = parse_source_key(skey)
            files = contents.get(version.hash)
            if files is None:
                raise RecordError(f"revision {revision.revision}: no content given for {skey} {version.hash}")
            if snapshot(kind, name, files) != version:
                raise RecordError(f"revision {revision.revision}: the content given for {skey} is not "
                                  f"{version.hash} with these file ids")
            for key, fid in version.files.items():
                blobs[fid] = base64.b64encode(files[key]).decode()
    body = {"data": {RECORD_KEY: json.dumps(release.to_json(), separators=(",", ":"), sort_keys=True)},
            "binaryData": dict(sorted(blobs.items()))}
    size = record_size(body)
    if size > MAX_RECORD_BYTES:
        raise RecordTooLargeError(
            f"the release record of {release.kind} {release.name} would be {size} bytes, more than the "
            f"{MAX_RECORD_BYTES} a ConfigMap may hold (accepted + candidate content of its ConfigMaps)")
    return body


def record_size(body: Mapping[str, Any]) -> int:
    """A ConfigMap body's size as the API server counts it against its 1 MiB limit: every
    ``data`` value's bytes plus every ``binaryData`` value's decoded bytes."""
    data = body.get("data") or {}
    binary = body.get("binaryData") or {}
    return (sum(len(str(v).encode()) for v in data.values())
            + sum(len(str(v)) * 3 // 4 - str(v).count("=") for v in binary.values()))


def decode_record(configmap: Mapping[str, Any]) -> ReleaseRecord:
    """Read a record ConfigMap as the API returns it.

    Raises:
        RecordError: no or invalid ``release.json``, a file missing or not base64, or files
            that do not hash to their recorded source hash (the message says which).
    """
    name = str((configmap.get("metadata") or {}).get("name") or "release record")
    try:
        data = configmap.get("data")
        raw = data.get(RECORD_KEY) if isinstance(data, Mapping) else None
        if not isinstance(raw, str):
            raise RecordError(f"no data[{RECORD_KEY!r}]")
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise RecordError(f"{RECORD_KEY} is not valid JSON: {exc}") from None
        release = Release.from_json(parsed)
        binary = configmap.get("binaryData")
        binary = {} if binary is None else binary
        if not isinstance(binary, Mapping):
            raise RecordError("binaryData must be an object")
        blobs: dict[str, bytes] = {}
        for revision in _kept(release):
            for skey, version in revision.sources.items():
                kind, source = parse_source_key(skey)
                files: dict[str, bytes] = {}
                for key, fid in version.files.items():
                    encoded = binary.get(fid)
                    if not isinstance(encoded, str):
                        raise RecordError(f"revision {revision.revision}: {skey} key {key}: "
                                          f"binaryData[{fid!r}] is missing")
                    try:
                        files[key] = blobs[fid] = base64.b64decode(encoded, validate=True)
                    except (binascii.Error, ValueError):
                        raise RecordError(f"binaryData[{fid!r}] is not base64") from None
                if content_hash(kind, source, files) != version.hash:
                    raise RecordError(f"revision {revision.revision}: the files of {skey} do not hash to "
                                      f"{version.hash}")
    except RecordError as exc:
        raise RecordError(f"ConfigMap {name}: {exc}") from None
    rv = (configmap.get("metadata") or {}).get("resourceVersion")
    return ReleaseRecord(release, blobs, rv if isinstance(rv, str) else None)


def _kept(release: Release) -> tuple[Revision, ...]:
    return (release.accepted,) if release.candidate is None else (release.accepted, release.candidate)


# -- field readers: each raises RecordError naming the field --------------------------------


def _obj(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecordError(f"{where} must be an object")
    return data


def _list(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise RecordError(f"{where} must be a list")
    return data


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise RecordError(f"{where}.{key} must be a non-empty string")
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key, where)


def _name(obj: dict[str, Any], key: str, where: str) -> str:
    value = _str(obj, key, where)
    if not is_name(value):
        raise RecordError(f"{where}.{key} {value!r} is not a valid Kubernetes name")
    return value


def _number(obj: dict[str, Any], where: str) -> int:
    value = obj.get("revision")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_REVISION:
        raise RecordError(f"{where}.revision must be a positive integer, got {value!r}")
    return value


def _hash(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HASH_RE.match(value):
        raise RecordError(f"{where} must be sha256:<64 hex digits>, got {value!r}")
    return value


def _version(data: Any, where: str) -> SourceVersion:
    obj = _obj(data, where)
    digest = _hash(obj.get("hash"), f"{where}.hash")
    files = _obj(obj.get("files"), f"{where}.files")
    for index, key in enumerate(sorted(files)):
        if not is_key(key) or files[key] != file_id(digest, index):
            raise RecordError(f"{where}.files: key {key!r} must be a valid key filed as "
                              f"{file_id(digest, index)!r}, got {files[key]!r}")
    return SourceVersion(digest, dict(files))


def _sources(data: Any, where: str) -> dict[str, SourceVersion]:
    obj = _obj(data, f"{where}.sources")
    for skey in obj:
        parse_source_key(skey)
    return {skey: _version(value, f"{where}.sources[{skey!r}]") for skey, value in obj.items()}


def _revision(data: Any, where: str) -> Revision:
    obj = _obj(data, where)
    return Revision(_number(obj, where), _sources(obj.get("sources"), where))


def _candidate(data: Any) -> Candidate:
    obj = _obj(data, "candidate")
    pods = _list(obj.get("pods", []), "candidate.pods")
    if not all(isinstance(p, str) and is_name(p) for p in pods):
        raise RecordError("candidate.pods must be a list of pod names")
    return Candidate(_number(obj, "candidate"), _sources(obj.get("sources"), "candidate"),
                     pods=tuple(pods), refresh=_opt_str(obj, "refresh", "candidate"))


def _hashes(data: Any, where: str) -> dict[str, str]:
    obj = _obj(data, f"{where}.sources")
    for skey in obj:
        parse_source_key(skey)
    return {skey: _hash(value, f"{where}.sources[{skey!r}]") for skey, value in obj.items()}


def _rejected(data: Any, index: int) -> Rejected:
    where = f"rejected[{index}]"
    obj = _obj(data, where)
    return Rejected(_number(obj, where), _hashes(obj.get("sources"), where),
                    reason=_str(obj, "reason", where), at=_time(obj, "at", where),
                    refresh=_opt_str(obj, "refresh", where))


def _accepted(data: Any, index: int) -> Accepted:
    where = f"history[{index}]"
    obj = _obj(data, where)
    return Accepted(_number(obj, where), _hashes(obj.get("sources"), where),
                    accepted_at=_time(obj, "acceptedAt", where), refresh=_opt_str(obj, "refresh", where))


def _time(obj: dict[str, Any], key: str, where: str) -> datetime:
    try:
        return parse_timestamp(_str(obj, key, where))
    except ValueError as exc:
        raise RecordError(f"{where}.{key} {exc}") from None


def _fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
