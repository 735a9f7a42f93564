"""The content hashes the operator and the sidecar must compute identically: the hash of
one source (what a release record stores per ConfigMap) and the combined hash of a set of
sources (what acks report as ``configHash``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


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
