"""What the operator and the sidecar must compute identically: the bytes of a ConfigMap's or
Secret's keys as read from the API, the hash of one source (what a release record stores per
ConfigMap) and the combined hash of a set of sources (what acks report as ``configHash``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any


class UndecodableError(ValueError):
    """A value the API returns base64-encoded (a ConfigMap's ``binaryData``, a Secret's
    ``data``) is not base64."""

    def __init__(self, key: str, field: str, why: str) -> None:
        super().__init__(f"key {key!r}: {field} is not base64: {why}")
        self.key = key
        #: ``binaryData`` or ``data``.
        self.field = field
        #: What the base64 decoder said.
        self.why = why


def object_files(obj: Mapping[str, Any], kind: str) -> dict[str, bytes]:
    """The keys of a ConfigMap or Secret (``kind``) object from the API, as files hold them:
    a ConfigMap's ``data`` as UTF-8 and ``binaryData`` decoded, a Secret's ``data`` decoded.
    Keys are not checked here (the sidecar checks that they can be file names).

    Raises:
        UndecodableError: a value that should be base64 is not (the API server never returns one).
        ValueError: ``kind`` is neither ConfigMap nor Secret.
    """
    if kind == "Secret":
        files = _decoded(obj, "data")
        # never returned by GET; harmless
        files.update((key, str(value).encode()) for key, value in (obj.get("stringData") or {}).items())
        return files
    if kind != "ConfigMap":
        raise ValueError(f"{kind!r}: only ConfigMaps and Secrets hold files")
    files = {key: str(value).encode() for key, value in (obj.get("data") or {}).items()}
    files.update(_decoded(obj, "binaryData"))
    return files


def _decoded(obj: Mapping[str, Any], field: str) -> dict[str, bytes]:
    files = {}
    for key, value in (obj.get(field) or {}).items():
        try:
            files[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UndecodableError(key, field, str(exc)) from None
    return files


def content_hash(kind: str, name: str, files: Mapping[str, bytes]) -> str:
    """``sha256:<hex>`` over the source's identity and every key and value (order-independent)."""
    digest = hashlib.sha256(f"{kind}\0{name}\0".encode())
    for key in sorted(files):
        value = files[key]
        digest.update(f"{key}\0{len(value)}\0".encode())
        digest.update(value)
    return "sha256:" + digest.hexdigest()


def combined_hash(hashes: Iterable[str]) -> str:
    """One hash for a set of sources (what acks report as ``configHash``)."""
    digest = hashlib.sha256()
    for value in sorted(hashes):
        digest.update(value.encode() + b"\n")
    return "sha256:" + digest.hexdigest()
