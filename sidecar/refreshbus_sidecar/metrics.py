"""A handful of Prometheus metrics, rendered in the text exposition format by hand
(the sidecar must not pay for ``prometheus_client``). Thread-safe: the health server
renders while the main loop counts."""

from __future__ import annotations

import threading
from collections import defaultdict

#: Reload latency histogram buckets, seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_HELP = {
    "refreshbus_sidecar_events_received_total": ("counter", "Refresh events received from the broker."),
    "refreshbus_sidecar_events_dropped_total": (
        "counter", "Messages dropped without processing, by reason (malformed, foreign, ...)."),
    "refreshbus_sidecar_refreshes_total": (
        "counter", "Refreshes handled, by ack result (ok, unchanged, failed)."),
    "refreshbus_sidecar_duplicate_events_total": (
        "counter", "Events whose id was already handled (redelivered, replayed): first result repeated."),
    "refreshbus_sidecar_reloads_total": ("counter", "App reloads attempted, by result (success, failure)."),
    "refreshbus_sidecar_reconnects_total": (
        "counter", "Broker connections (re-)established after the first."),
    "refreshbus_sidecar_sync_errors_total": ("counter", "Failed fetches or writes of the managed config."),
    "refreshbus_sidecar_broker_connected": ("gauge", "1 while connected to a broker."),
    "refreshbus_sidecar_ready": ("gauge", "1 once the initial config has been written."),
    "refreshbus_sidecar_release_revision": (
        "gauge", "Release-record revision the pod runs (0: the workload has no record)."),
    "refreshbus_sidecar_last_loop_timestamp_seconds": ("gauge", "Unix time of the consume loop's last turn."),
    "refreshbus_sidecar_reload_duration_seconds": ("histogram", "Time taken by the reload action."),
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._hist_counts = [0] * len(BUCKETS)
        self._hist_sum = 0.0
        self._hist_n = 0

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def observe_reload(self, seconds: float) -> None:
        with self._lock:
            self._hist_n += 1
            self._hist_sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._hist_counts[i] += 1

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in _HELP.items():
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    base = name.removesuffix("_seconds") + "_seconds"
                    for bound, count in zip(BUCKETS, self._hist_counts, strict=True):
                        lines.append(f'{base}_bucket{{le="{bound}"}} {count}')
                    lines.append(f'{base}_bucket{{le="+Inf"}} {self._hist_n}')
                    lines.append(f"{base}_sum {self._hist_sum}")
                    lines.append(f"{base}_count {self._hist_n}")
                    continue
                series = self._values.get(name) or {(): 0.0}
                for labels, value in sorted(series.items()):
                    lines.append(f"{name}{_labels(labels)} {_num(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
