"""Command line: ``refreshbus-sidecar [run|watch]``. Settings come from the environment."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from refreshbus_wire import pods

from refreshbus_sidecar import config, logs
from refreshbus_sidecar.health import HealthServer, State
from refreshbus_sidecar.metrics import Metrics

log = logging.getLogger("refreshbus.sidecar")

ENV_HELP = f"""\
environment (set by the refreshbus injector; * = required in `run` mode):
  identity (Downward API)
    {pods.ENV_NAMESPACE}*, {pods.ENV_POD_NAME}*, {pods.ENV_POD_UID}
    {pods.ENV_WORKLOAD_KIND} (Deployment|StatefulSet|DaemonSet|ReplicaSet|Pod, default Pod)
    {pods.ENV_WORKLOAD_NAME} (default: the pod name), {pods.ENV_APP}
  what to manage and where
    {pods.ENV_CONFIGMAPS}, {pods.ENV_SECRETS}   comma-separated names (at least one*)
    {pods.ENV_TARGET_DIR}   shared volume (default {pods.DEFAULT_TARGET_DIR}); each source goes to
                          <dir>/configmap-<name>/ or <dir>/secret-<name>/, kubelet-style
    {pods.ENV_CONFIGMAP_MODE} / {pods.ENV_SECRET_MODE}   file modes (default 0644 / 0440)
    {pods.ENV_INPLACE_FILES}   <source dir>/<key>,... kept as regular files under
                          <dir>/{pods.INPLACE_DIR}/ and rewritten in place (for subPath file mounts)
  reload action
    {pods.ENV_ACTION}   signal | http | none (default: inferred from what is set)
    {pods.ENV_SIGNAL} (default SIGHUP), {pods.ENV_PROCESS} (regex over the app's command line)
    {pods.ENV_RELOAD_URL}, {pods.ENV_RELOAD_METHOD} (default POST), {pods.ENV_RELOAD_TIMEOUT} (s, default 5)
    {pods.ENV_HEALTH_URL}, {pods.ENV_HEALTH_TIMEOUT} (s, default 10): must answer 2xx after a reload
  broker (credentials: prefer the file; never logged)
    {pods.ENV_BROKER_URLS}* or {pods.ENV_BROKER_URLS_FILE}*   amqp[s]://user:pass@host:port/vhost, several
                          separated by commas/newlines: tried in random order
    {pods.ENV_BROKER_CA_FILE}, {pods.ENV_HEARTBEAT} (s, default 30)
    {pods.ENV_RECONNECT_INITIAL} / {pods.ENV_RECONNECT_MAX}   reconnect delay bounds (default 0.5 / 30 s)
    {pods.ENV_ACK_TOKEN_FILE}   the pod's projected token for the ack audience, sent with
                          every ack so the operator can check which pod sent it
                          (the injector mounts it at {pods.ACK_TOKEN_DIR}/{pods.ACK_TOKEN_FILE})
  Kubernetes API
    in-cluster service account by default; {pods.ENV_KUBECONFIG}: a JSON kubeconfig instead
    {pods.ENV_FETCH_JITTER} (s, default 0.3): random delay before fetching after an event
    {pods.ENV_RESYNC_INTERVAL} (s, default 300, 0 = never): periodic level-triggered re-sync
  probes and logs
    {pods.ENV_HEALTH_PORT} (default {pods.DEFAULT_HEALTH_PORT}; 0 = any free port), {pods.ENV_HEALTH_BIND}
    serves /readyz (initial config written), /livez (loop and worker alive), /metrics
    {pods.ENV_LOG_LEVEL} (DEBUG|INFO|WARNING|ERROR; JSON lines on stderr)
  watch mode
    {pods.ENV_WATCH_DIRS}   directories to watch (or --dir)

exit status: 0 after SIGTERM/SIGINT, 2 on a configuration error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refreshbus-sidecar",
        description="Receive targeted refresh events, write the new ConfigMaps/Secrets into the shared "
        "volume atomically, reload the app (signal or HTTP) and ack -- or, in watch mode, reload "
        "the app when a directory's content changes.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,watch}")
    sub.add_parser("run", help="bus mode (the default): consume refresh events from RabbitMQ",
                   description="Bus mode: see the environment list in `refreshbus-sidecar --help`.")
    watch = sub.add_parser("watch", help="watch mode: reload the app when a directory's content changes",
                           description="Watch directories (e.g. a kubelet-projected ConfigMap volume) and "
                           "run the reload action when their content really changes.")
    watch.add_argument("--dir", action="append", type=Path, default=[], dest="dirs",
                       help=f"directory to watch (repeatable; default ${pods.ENV_WATCH_DIRS})")
    watch.add_argument("--debounce-ms", type=int, default=500,
                       help="group the file events of up to this long into one change (default 500)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = config.load(watch_mode=command == "watch")
    except config.ConfigError as exc:
        print(f"refreshbus-sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    if command == "watch":
        return _watch(settings, args.dirs or list(settings.watch_dirs), args.debounce_ms)
    return _run(settings)


def _start_health(settings: config.Settings, max_age: float) -> tuple[State, Metrics, HealthServer | None]:
    metrics = Metrics()
    state = State(max_age=max_age)
    server = None
    if settings.health_port or settings.health_bind:
        server = HealthServer(settings.health_bind, settings.health_port, state, metrics)
        server.start()
        log.info("probes on http://%s:%d/{readyz,livez,metrics}", settings.health_bind, server.port,
                 extra={"health_port": server.port})
    return state, metrics, server


def _run(settings: config.Settings) -> int:
    from refreshbus_sidecar.bus import Bus
    from refreshbus_sidecar.delivery import Store
    from refreshbus_sidecar.kubeapi import ApiError, KubeClient
    from refreshbus_sidecar.refresher import Refresher
    from refreshbus_sidecar.service import TICK, Service

    try:
        api = KubeClient.from_environment(settings.kubeconfig)
    except (ApiError, OSError) as exc:
        print(f"refreshbus-sidecar: configuration error: Kubernetes API: {exc}", file=sys.stderr)
        return 2
    state, metrics, _server = _start_health(settings, max_age=6 * TICK)
    refresher = Refresher(settings, api, Store(settings.target_dir, settings.inplace_files), metrics)
    bus = Bus(settings.broker_urls, settings.identity, heartbeat=settings.heartbeat,
              ca_file=settings.broker_ca_file, token_file=settings.ack_token_file)
    service = Service(settings, refresher, bus, state, metrics)
    service.install_signal_handlers()
    log.info("starting", extra={
        "pod": settings.identity.instance,
        "sources": [f"{k}/{n}" for k, n in settings.sources],
        "target_dir": str(settings.target_dir), "action": settings.reload.type,
        "brokers": len(settings.broker_urls)})
    return service.run()


def _watch(settings: config.Settings, dirs: list[Path], debounce_ms: int) -> int:
    from refreshbus_sidecar.reload import ReloadAction
    from refreshbus_sidecar.watch import Watcher

    if not dirs:
        print(f"refreshbus-sidecar: configuration error: watch needs --dir or {pods.ENV_WATCH_DIRS}",
              file=sys.stderr)
        return 2
    r = settings.reload
    action = ReloadAction(type=r.type, signal=r.signal, process=r.process, url=r.url, method=r.method,
                          timeout=r.timeout, health_url=r.health_url, health_timeout=r.health_timeout)
    state, metrics, _server = _start_health(settings, max_age=30.0)
    watcher = Watcher(dirs, action, state, metrics, debounce_ms=debounce_ms)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        watcher.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return watcher.run()


if __name__ == "__main__":
    sys.exit(main())
