"""What the scale harness reads off the running components (API server, processes)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def api_requests(plane: Any) -> Counter[str]:
    """``apiserver_request_total`` by ``"<VERB> <resource>[/<subresource>]"`` (resource
    requests only), from the API server's own metrics; ``plane`` has ``kubectl()``."""
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    out: Counter[str] = Counter()
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        labels = {k: v.strip('"') for k, v in (kv.split("=", 1) for kv in m["labels"].split(","))}
        if not labels.get("resource"):
            continue
        key = f"{labels['verb']} {labels['resource']}" + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        out[key] += int(float(m["value"]))
    return out


def rss_mib(pid: int) -> dict[str, int]:
    """VmRSS and its peak VmHWM of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"{key}:\s+(\d+)", status)
        out[key] = int(m.group(1)) // 1024 if m else 0
    return out


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]
