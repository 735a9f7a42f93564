"""Watch mode: reload the app when a directory's content really changes (no broker).

For a kubelet-projected ConfigMap/Secret volume (or any directory). Watches the
*directory* -- a watch on a file symlink goes deaf after kubelet's first ``..data`` swap --
groups the burst of raw events one swap causes (debounce), then re-reads the visible
files and reloads only if their content hash changed. watchfiles is imported here only,
so bus mode never pays for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from refreshbus_sidecar import reload as reload_mod
from refreshbus_sidecar.health import State
from refreshbus_sidecar.metrics import Metrics

log = logging.getLogger("refreshbus.sidecar.watch")


def dir_hash(paths: Sequence[Path]) -> str:
    """Hash of every visible file under ``paths`` (following symlinks, skipping ``..*`` entries)."""
    digest = hashlib.sha256()
    for root in paths:
        digest.update(f"{root}\0".encode())
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".."))
            for name in sorted(filenames):  # key symlinks to files count as files
                if name.startswith(".."):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    with open(path, "rb") as fh:
                        data = fh.read()
                except OSError:
                    continue  # vanished mid-swap: the next batch sees the final state
                digest.update(f"{os.path.relpath(path, root)}\0{len(data)}\0".encode())
                digest.update(data)
    return "sha256:" + digest.hexdigest()


class Watcher:
    def __init__(self, paths: Sequence[Path], action: reload_mod.ReloadAction, state: State,
                 metrics: Metrics, *, debounce_ms: int = 500, step_ms: int = 100) -> None:
        self.paths = list(paths)
        self.action = action
        self.state = state
        self.metrics = metrics
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.stop_event = threading.Event()

    def run(self) -> int:
        from watchfiles import watch  # lazy: ~10 MB that bus mode never needs

        for path in self.paths:
            if not path.is_dir():
                log.error("cannot watch %s: not a directory", path)
                return 2
        current = dir_hash(self.paths)
        self.state.ready = True
        self.state.detail = "watching"
        log.info("watching %s", ", ".join(map(str, self.paths)), extra={"config_hash": current})
        for changes in watch(*self.paths, watch_filter=None, debounce=self.debounce_ms, step=self.step_ms,
                             stop_event=self.stop_event, rust_timeout=5_000, yield_on_timeout=True,
                             raise_interrupt=False):
            self.state.tick()
            if not changes:
                continue  # the periodic timeout: only proves the loop is alive
            new = dir_hash(self.paths)
            if new == current:
                log.debug("%d file events, content unchanged", len(changes))
                continue
            current = new
            self._reload(current)  # a failed reload waits for the next real change
        log.info("stopped")
        return 0

    def _reload(self, config_hash: str) -> None:
        started = time.monotonic()
        try:
            done = reload_mod.run(self.action)
        except reload_mod.ReloadError as exc:
            self.metrics.inc("refreshbus_sidecar_reloads_total", result="failure")
            log.warning("content changed, but the reload failed: %s", exc, extra={"config_hash": config_hash})
            return
        finally:
            self.metrics.observe_reload(time.monotonic() - started)
        self.metrics.inc("refreshbus_sidecar_reloads_total", result="success")
        log.info("content changed, reloaded: %s", done, extra={"config_hash": config_hash})
