"""Atomic delivery into the shared volume, the way kubelet's AtomicWriter does it.

Layout of one source directory ``<target>/<source_dir_name(kind, name)>/``::

    ..2026_11_21_00_45_54.1234567/   the current version (one file per key)
    ..2026_11_21_00_40_01.7654321/   the previous version, kept for inspection/rollback
    ..data -> ..2026_11_21_00_45_54.1234567
    app.conf -> ..data/app.conf       one visible symlink per key

An update writes a new timestamped directory beside the current one, points a temporary
symlink at it and ``rename(2)``\\ s it over ``..data`` -- one atomic step, so a reader
sees either the old files or the new ones, never a half-written file or a missing key.
Several sources are prepared first (all new directories written), then swapped one
after the other, then the caller reloads the app once. Any error while preparing
removes what was written and leaves every current version untouched.

**In-place files** (``subPath`` file mounts). A container that mounts one key as a file
(``subPath``) holds a bind mount of one inode: it never sees a ``..data`` swap. For such
keys (``REFRESHBUS_INPLACE_FILES``) the store keeps a regular file at
``<target>/.inplace/<source dir>/<key>`` that is never replaced, only rewritten in its own
inode, and the injector mounts *that* file. On a change: every in-place file is opened
(created the first time) before anything is swapped, so a file that cannot be opened
fails the change with nothing touched; after the ``..data`` swap each file gets the whole
new content in one ``pwrite`` at offset 0, an ``ftruncate`` to the new length and an
``fsync``; the caller reloads the app only after all of them. This is **not atomic**: a
reader that reads the file during those few microseconds can see the new bytes followed by
the tail of the old content, or a short file. If a write fails (disk full), the files
already rewritten get their previous content back (where the disk allows) and the swaps
are undone. A key that disappears from the source keeps its last content in the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refreshbus_wire import contract
from refreshbus_wire.hashing import UndecodableError, content_hash, object_files
from refreshbus_wire.pods import INPLACE_DIR, source_dir_name

DATA_DIR = "..data"
DATA_TMP = "..data_tmp"


class DeliveryError(RuntimeError):
    """Writing the new config failed; the previous config is still in place."""


@dataclass(frozen=True, slots=True)
class Payload:
    """The content of one ConfigMap or Secret, ready to be written."""

    kind: str
    name: str
    files: Mapping[str, bytes]
    mode: int
    resource_version: str | None = None

    @property
    def hash(self) -> str:
        return content_hash(self.kind, self.name, self.files)

    @property
    def dirname(self) -> str:
        return source_dir_name(self.kind, self.name)


def payload_from_object(obj: Mapping[str, Any], kind: str, mode: int) -> Payload:
    """Decode a ConfigMap (``data`` + ``binaryData``) or Secret (``data``, base64) from the API.

    Raises:
        DeliveryError: an invalid key or undecodable value.
    """
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    try:
        files = object_files(obj, kind)
    except UndecodableError as exc:
        raise DeliveryError(f"{kind} {name}: undecodable value: {exc.why}") from None
    for key in files:
        if not contract.is_key(key):
            raise DeliveryError(f"{kind} {name}: key {key!r} cannot be a file name")
    return Payload(kind=kind, name=name, files=files, mode=mode, resource_version=meta.get("resourceVersion"))


class Store:
    """The shared volume: one kubelet-style directory per source."""

    def __init__(self, root: Path, inplace: Iterable[tuple[str, str, str]] = ()) -> None:
        self.root = Path(root)
        self._hashes: dict[str, str] = {}
        self._to_prune: set[str] = set()
        #: source dir -> keys kept as in-place files (subPath file mounts), see module doc.
        self._inplace: dict[str, list[str]] = {}
        for kind, name, key in inplace:
            self._inplace.setdefault(source_dir_name(kind, name), []).append(key)
        #: source dirs whose in-place files are known to match ``..data`` (checked once).
        self._inplace_ok: set[str] = set()

    def inplace_file(self, dirname: str, key: str) -> str:
        return os.path.join(self.root, INPLACE_DIR, dirname, key)

    def source_dir(self, kind: str, name: str) -> Path:
        return self.root / source_dir_name(kind, name)

    def current_hash(self, kind: str, name: str) -> str | None:
        """Hash of what is on disk now (read once, then remembered), None if nothing is."""
        dirname = source_dir_name(kind, name)
        if dirname in self._hashes:
            return self._hashes[dirname]
        data = self.source_dir(kind, name) / DATA_DIR
        if not data.is_dir():
            return None
        files: dict[str, bytes] = {}
        try:
            for entry in os.scandir(data):
                if entry.is_file():
                    with open(entry.path, "rb") as fh:
                        files[entry.name] = fh.read()
        except OSError:
            return None
        self._hashes[dirname] = content_hash(kind, name, files)
        return self._hashes[dirname]

    def current_value(self, kind: str, name: str, key: str) -> bytes | None:
        """The applied content of one key (None: the key, or the source, is not on disk)."""
        try:
            with open(os.path.join(self.root, source_dir_name(kind, name), DATA_DIR, key), "rb") as fh:
                return fh.read()
        except OSError:
            return None

    def apply(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Write every payload whose content differs from what is on disk, as one change.

        Returns the payloads that were written (empty: nothing changed, do not reload).

        Raises:
            DeliveryError: nothing became visible; the previous config is intact.
        """
        changed = [p for p in payloads
                   if self.current_hash(p.kind, p.name) != p.hash or not self._inplace_in_sync(p)]
        if not changed:
            return []
        prepared: list[tuple[Payload, str]] = []
        inplace: list[_InPlace] = []
        try:
            try:
                for payload in changed:
                    prepared.append((payload, self._prepare(payload)))
                # Opened (created if need be) before anything is swapped: a file that cannot
                # be opened for writing fails the change while everything is still intact.
                for payload in changed:
                    inplace.extend(self._open_inplace(payload))
            except OSError as exc:
                for _, tsdir in prepared:
                    shutil.rmtree(tsdir, ignore_errors=True)
                raise DeliveryError(_describe(exc, "writing the new config")) from None
            swapped: list[tuple[Payload, str | None]] = []
            try:
                for payload, tsdir in prepared:
                    swapped.append((payload, self._swap(payload, tsdir)))
            except OSError as exc:
                self._roll_back(swapped, prepared)
                raise DeliveryError(_describe(exc, "swapping in the new config")) from None
            written: list[_InPlace] = []
            try:
                for item in inplace:  # after the swap, before the caller reloads the app
                    written.append(item)
                    item.write(item.new)
            except OSError as exc:
                for item in written:  # put the previous content back, where the disk lets us
                    with contextlib.suppress(OSError):
                        item.write(item.old)
                self._roll_back(swapped, prepared)
                raise DeliveryError(_describe(exc, "rewriting a subPath-mounted file in place")) from None
        finally:
            for item in inplace:
                with contextlib.suppress(OSError):
                    os.close(item.fd)
        for payload, _ in prepared:
            self._hashes[payload.dirname] = payload.hash
            self._inplace_ok.add(payload.dirname)
            self._finish(payload)
            self._to_prune.add(payload.dirname)
        return changed

    def _roll_back(
        self, swapped: list[tuple[Payload, str | None]], prepared: list[tuple[Payload, str]]
    ) -> None:
        for payload, previous in reversed(swapped):  # put the old versions back
            with contextlib.suppress(OSError):
                if previous is not None:
                    self._point_data(self.root / payload.dirname, previous)
                else:
                    (self.root / payload.dirname / DATA_DIR).unlink()
            self._hashes.pop(payload.dirname, None)
        for _, tsdir in prepared:  # none of them is current any more
            shutil.rmtree(tsdir, ignore_errors=True)

    # -- in-place files (subPath file mounts) ------------------------------------------

    def _inplace_in_sync(self, payload: Payload) -> bool:
        """Whether every in-place file of the source holds what ``..data`` holds (read once
        per source and process: afterwards this store is the only writer)."""
        keys = self._inplace.get(payload.dirname)
        if not keys or payload.dirname in self._inplace_ok:
            return True
        for key in keys:
            if key not in payload.files:
                continue  # a key the source no longer has: the file keeps its last content
            try:
                with open(self.inplace_file(payload.dirname, key), "rb") as fh:
                    if fh.read() != payload.files[key]:
                        return False
            except OSError:
                return False
        self._inplace_ok.add(payload.dirname)
        return True

    def _open_inplace(self, payload: Payload) -> list[_InPlace]:
        keys = self._inplace.get(payload.dirname) or []
        if not keys:
            return []
        directory = os.path.join(self.root, INPLACE_DIR, payload.dirname)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        # Owner-writable: the sidecar owns the file and must reopen it for every change;
        # the app's mount of it is read-only.
        mode = payload.mode | 0o200
        items: list[_InPlace] = []
        try:
            for key in keys:
                fd = os.open(os.path.join(directory, key),
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                item = _InPlace(fd, b"", payload.files.get(key, b""))
                items.append(item)
                old = bytearray()
                while chunk := os.read(fd, 1 << 16):
                    old += chunk
                item.old = bytes(old)
                if key not in payload.files:
                    item.new = item.old  # the key is gone: keep the last content
                os.fchmod(fd, mode)
        except OSError:
            for item in items:
                with contextlib.suppress(OSError):
                    os.close(item.fd)
            raise
        return items

    def prune(self) -> None:
        """Delete versions older than the previous one (after the reload: off the hot path)."""
        for dirname in sorted(self._to_prune):
            sdir = self.root / dirname
            with contextlib.suppress(OSError):
                current = os.readlink(sdir / DATA_DIR)
                versions = sorted(
                    (e for e in os.scandir(sdir)
                     if e.name.startswith("..") and e.name not in {DATA_DIR, DATA_TMP}
                     and e.is_dir(follow_symlinks=False)),
                    key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns,
                )
                older = [e for e in versions if e.name != current]
                for entry in older[:-1]:  # keep the newest non-current one: the previous version
                    shutil.rmtree(entry.path, ignore_errors=True)
        self._to_prune.clear()

    # -- steps -------------------------------------------------------------------------

    def _prepare(self, payload: Payload) -> str:
        """Write the new version into a fresh hidden timestamped directory."""
        sdir = self.root / payload.dirname
        sdir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        # Plain strings, not Path: pathlib interns every path component, and each version
        # name is unique, which would grow the interpreter's interned-string table forever.
        tsdir = tempfile.mkdtemp(prefix=f"..{stamp}.", dir=str(sdir))
        try:
            for key, value in payload.files.items():
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                fd = os.open(os.path.join(tsdir, key), flags, 0o600)
                try:
                    view = memoryview(value)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fchmod(fd, payload.mode)
                finally:
                    os.close(fd)
            os.chmod(tsdir, 0o755)
        except OSError:
            shutil.rmtree(tsdir, ignore_errors=True)
            raise
        return tsdir

    def _swap(self, payload: Payload, tsdir: str) -> str | None:
        """Atomically point ``..data`` at the new version; returns the previous target."""
        sdir = self.root / payload.dirname
        data = sdir / DATA_DIR
        previous = os.readlink(data) if data.is_symlink() else None
        self._point_data(sdir, os.path.basename(tsdir))
        return previous

    @staticmethod
    def _point_data(sdir: Path, target: str) -> None:
        tmp = sdir / DATA_TMP
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.rename(tmp, sdir / DATA_DIR)

    def _finish(self, payload: Payload) -> None:
        """Visible per-key symlinks for the new keys; stale ones removed.

        Best effort: by now the swap has happened, so errors here are not delivery errors.
        """
        sdir = self.root / payload.dirname
        with contextlib.suppress(OSError):
            for key in payload.files:
                link = sdir / key
                if link.is_symlink() and os.readlink(link) == f"{DATA_DIR}/{key}":
                    continue
                tmp = sdir / f"..{key}.tmp"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink(f"{DATA_DIR}/{key}", tmp)
                os.rename(tmp, link)
            for entry in os.scandir(sdir):
                if (entry.is_symlink() and not entry.name.startswith("..")
                        and entry.name not in payload.files
                        and os.readlink(entry.path).startswith(DATA_DIR + "/")):
                    os.unlink(entry.path)


class _InPlace:
    """One in-place file being rewritten: its open descriptor, old and new content."""

    __slots__ = ("fd", "new", "old")

    def __init__(self, fd: int, old: bytes, new: bytes) -> None:
        self.fd = fd
        self.old = old
        self.new = new

    def write(self, content: bytes) -> None:
        """Rewrite the file in its own inode: the whole content at offset 0, then cut
        to length, then fsync. Not atomic: a reader in between may see a mix."""
        view = memoryview(content)
        offset = 0
        while offset < len(view):  # one pwrite, unless the kernel writes less
            n = os.pwrite(self.fd, view[offset:], offset)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            offset += n
        os.ftruncate(self.fd, len(content))
        os.fsync(self.fd)


def _describe(exc: OSError, doing: str) -> str:
    what = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{doing} failed: {what}{where}; the previous config is still in place"
