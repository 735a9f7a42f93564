"""What a round persists and what it reads from a spec: the round-record codec (the
``refreshbus.io/round`` annotation) and pure helpers over ``ConfigRefresh.spec``.

The round record holds the round's event id, generation, targets and source versions
(plus, when status had to truncate them, the per-pod results), so a restarted operator
can rebuild the round. It is compressed JSON in base64: annotations are size-limited.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refreshbus_wire import Action

# -- spec helpers (pure) -----------------------------------------------------------------


def spec_source_entries(spec: Mapping[str, Any]) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """``spec.sources`` as (kind, name, keys); keys ``None`` when the entry names none (every key)."""
    out: list[tuple[str, str, tuple[str, ...] | None]] = []
    for entry in spec.get("sources") or ():
        for field, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            if field in entry:
                ref = entry[field]
                keys = ref.get("keys")
                out.append((kind, ref["name"], tuple(keys) if keys else None))
                break
    return out


def spec_sources(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(kind, name) for kind, name, _keys in spec_source_entries(spec)]


def spec_action(spec: Mapping[str, Any]) -> Action | None:
    action = spec.get("action")
    if not action:
        return None
    if "signal" in action:
        return Action(type="signal", signal=(action["signal"] or {}).get("name", "SIGHUP"))
    if "http" in action:
        http = action["http"]
        return Action(
            type="http",
            method=http.get("method", "POST"),
            port=int(http["port"]),
            path=http["path"],
            timeout_seconds=http.get("timeoutSeconds", 5),
        )
    return Action(type="none")


def encode_round(data: Mapping[str, Any]) -> str:
    return base64.b64encode(zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 9)).decode()


def decode_round(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        data = json.loads(zlib.decompress(base64.b64decode(value)))
    except (ValueError, zlib.error):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str | None
