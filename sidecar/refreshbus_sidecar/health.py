"""HTTP probes and metrics on one small port, served from a daemon thread.

* ``/readyz`` -- 200 once the initial config has been written to the shared volume (a
  startup/readiness probe can hold the app back until then), else 503.
* ``/livez`` -- 200 while the connection loop has turned within ``max_age`` seconds (it
  wakes at least every few seconds even when idle, so a wedged consumer fails this probe
  instead of answering 200 for hours) and the worker thread runs and has not spent longer
  than ``busy_limit`` seconds on one job (a slow API server or app is not a dead worker).
* ``/metrics`` -- Prometheus text format.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from refreshbus_sidecar.metrics import Metrics


class State:
    """What the probes report; written by the main loop, read by the server thread."""

    def __init__(self, max_age: float) -> None:
        self.ready = False
        self.connected = False
        self.max_age = max_age
        self.last_tick = time.monotonic()
        self.detail = "starting"
        #: Set up by the owner of a worker thread: whether it still runs, since when it is
        #: busy with its current job (None: idle), and how long one job may take.
        self.worker_running: Callable[[], bool] = lambda: True
        self.busy_since: float | None = None
        self.busy_limit = math.inf

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def busy_seconds(self) -> float:
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def alive(self) -> bool:
        return (time.monotonic() - self.last_tick < self.max_age and self.worker_running()
                and self.busy_seconds() < self.busy_limit)


class HealthServer:
    def __init__(self, bind: str, port: int, state: State, metrics: Metrics) -> None:
        self.state = state
        self.metrics = metrics
        handler = _make_handler(state, metrics)
        self._server = ThreadingHTTPServer((bind, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 3600},
                                        name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting probes (the serving thread is a daemon and ends with the process)."""
        self._server.server_close()


def _make_handler(state: State, metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "refreshbus-sidecar"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/readyz":
                self._send(200 if state.ready else 503,
                           {"ready": state.ready, "detail": state.detail, "broker": state.connected})
            elif path == "/livez":
                alive = state.alive
                self._send(200 if alive else 503, {
                    "alive": alive, "loop_age_seconds": round(time.monotonic() - state.last_tick, 3),
                    "worker_running": state.worker_running(),
                    "worker_busy_seconds": round(state.busy_seconds(), 3)})
            elif path == "/metrics":
                metrics.set("refreshbus_sidecar_last_loop_timestamp_seconds",
                            time.time() - (time.monotonic() - state.last_tick))
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._send(404, {"error": "not found", "paths": ["/readyz", "/livez", "/metrics"]})

        def _send(self, status: int, payload: dict[str, object]) -> None:
            body = json.dumps(payload).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the real logs

    return Handler
