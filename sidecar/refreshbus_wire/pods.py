"""The pod-level contract shared by the operator (injector, target resolution) and the
sidecar: annotation names users write, the sidecar container's name, the environment
variables the injector sets and the sidecar reads, and the shared-volume layout.

Kept here, next to the wire protocol, because both sides must agree on every name and
neither may import the other.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "refreshbus.io/"

# -- annotations on a workload's pod template (documented in docs/annotations.md) --------
#: "true" opts the pod in: the sidecar is injected.
ANN_INJECT: Final = PREFIX + "inject"
#: Comma-separated ConfigMap names the sidecar manages.
ANN_CONFIGMAPS: Final = PREFIX + "configmaps"
#: Comma-separated Secret names the sidecar manages.
ANN_SECRETS: Final = PREFIX + "secrets"
#: Signal to send on reload, e.g. "SIGHUP".
ANN_SIGNAL: Final = PREFIX + "signal"
#: Regular expression matched against a process's command line to find the app.
ANN_PROCESS: Final = PREFIX + "process"
#: Local URL to call on reload, e.g. "http://127.0.0.1:8080/-/reload".
ANN_RELOAD_URL: Final = PREFIX + "reload-url"
#: HTTP method for reload-url (default POST).
ANN_RELOAD_METHOD: Final = PREFIX + "reload-method"
#: URL that must answer 2xx after a reload for it to count as a success.
ANN_HEALTH_URL: Final = PREFIX + "health-url"
#: "true": refresh whenever a managed ConfigMap/Secret changes.
ANN_AUTO_REFRESH: Final = PREFIX + "auto-refresh"
#: Progressive rollout steps of the workload's config changes, e.g. "1,25%,100%" (pod counts,
#: then percentages of the targets; the last is 100%). Makes the workload versioned: the
#: operator keeps its release record (issue 13).
ANN_ROLLOUT: Final = PREFIX + "rollout"
#: How long each rollout step's pods must stay healthy before the next step, e.g. "30s", "2m".
ANN_ROLLOUT_BAKE: Final = PREFIX + "rollout-bake"
#: Overrides <app> in the Spring-style instance id "<app>:<pod>".
ANN_APP: Final = PREFIX + "app"
#: "true": the workload may be refreshed from the Spring Cloud Bus (the operator's bridge;
#: bus events carry no authentication, so this is a deliberate opt-in per workload).
ANN_SPRING_BUS: Final = PREFIX + "spring-bus"
#: Set by the injector on pods it mutated (idempotency marker).
ANN_INJECTED: Final = PREFIX + "injected"
#: Set by the injector: the wire protocol version of the sidecar it injected (the
#: operator rolls a release out only over pods whose sidecar follows the release record).
ANN_SIDECAR_PROTOCOL: Final = PREFIX + "sidecar-protocol"

#: Name of the injected sidecar container; the operator counts a pod as opted in only
#: when a container of this name is in its spec.
SIDECAR_CONTAINER: Final = "refreshbus-sidecar"

# -- sidecar environment (set by the injector; read only by refreshbus_sidecar.config) ---
ENV_NAMESPACE: Final = "REFRESHBUS_NAMESPACE"
ENV_POD_NAME: Final = "REFRESHBUS_POD_NAME"
ENV_POD_UID: Final = "REFRESHBUS_POD_UID"
ENV_APP: Final = "REFRESHBUS_APP"
ENV_WORKLOAD_KIND: Final = "REFRESHBUS_WORKLOAD_KIND"
ENV_WORKLOAD_NAME: Final = "REFRESHBUS_WORKLOAD_NAME"
ENV_CONFIGMAPS: Final = "REFRESHBUS_CONFIGMAPS"
ENV_SECRETS: Final = "REFRESHBUS_SECRETS"
ENV_TARGET_DIR: Final = "REFRESHBUS_TARGET_DIR"
ENV_ACTION: Final = "REFRESHBUS_ACTION"  # signal | http | none
ENV_SIGNAL: Final = "REFRESHBUS_SIGNAL"
ENV_PROCESS: Final = "REFRESHBUS_PROCESS"
ENV_RELOAD_URL: Final = "REFRESHBUS_RELOAD_URL"
ENV_RELOAD_METHOD: Final = "REFRESHBUS_RELOAD_METHOD"
ENV_RELOAD_TIMEOUT: Final = "REFRESHBUS_RELOAD_TIMEOUT"
ENV_HEALTH_URL: Final = "REFRESHBUS_HEALTH_URL"
ENV_BROKER_URLS: Final = "REFRESHBUS_BROKER_URLS"
ENV_BROKER_URLS_FILE: Final = "REFRESHBUS_BROKER_URLS_FILE"
ENV_KUBECONFIG: Final = "REFRESHBUS_KUBECONFIG"
ENV_HEALTH_PORT: Final = "REFRESHBUS_HEALTH_PORT"
ENV_LOG_LEVEL: Final = "REFRESHBUS_LOG_LEVEL"
# Tuning knobs (optional; the sidecar's defaults suit most pods). Added for issue 3.
#: Upper bound (seconds) of the random delay before fetching after an event (spreads a
#: fleet-wide refresh over time so the API server sees no burst).
ENV_FETCH_JITTER: Final = "REFRESHBUS_FETCH_JITTER"
#: First and last delay (seconds) between broker reconnect attempts (doubling in between).
ENV_RECONNECT_INITIAL: Final = "REFRESHBUS_RECONNECT_INITIAL"
ENV_RECONNECT_MAX: Final = "REFRESHBUS_RECONNECT_MAX"
#: AMQP heartbeat (seconds) the sidecar asks for.
ENV_HEARTBEAT: Final = "REFRESHBUS_HEARTBEAT"
#: Seconds between level-triggered re-syncs from the API (0: only at start/reconnect/events).
ENV_RESYNC_INTERVAL: Final = "REFRESHBUS_RESYNC_INTERVAL"
#: Octal file mode for Secret keys (default 0440) and ConfigMap keys (default 0644).
ENV_SECRET_MODE: Final = "REFRESHBUS_SECRET_MODE"
ENV_CONFIGMAP_MODE: Final = "REFRESHBUS_CONFIGMAP_MODE"
#: Seconds to wait for REFRESHBUS_HEALTH_URL to answer 2xx after a reload.
ENV_HEALTH_TIMEOUT: Final = "REFRESHBUS_HEALTH_TIMEOUT"
#: Bind address of the health/metrics server (default 0.0.0.0; "" with port 0 disables it).
ENV_HEALTH_BIND: Final = "REFRESHBUS_HEALTH_BIND"
#: CA bundle for amqps:// broker URLs (default: the system's trust store).
ENV_BROKER_CA_FILE: Final = "REFRESHBUS_BROKER_CA_FILE"
#: Comma-separated directories watched in `watch` mode.
ENV_WATCH_DIRS: Final = "REFRESHBUS_WATCH_DIRS"
#: Comma-separated ``<source dir>/<key>`` entries (e.g. ``configmap-web/app.yaml``): keys
#: that an app container mounts as a single file (``subPath``). The sidecar keeps a regular
#: file per entry at :func:`inplace_path` and rewrites it *in place* (same inode) on every
#: change, because a file bind mount pins its inode and never sees a ``..data`` swap.
ENV_INPLACE_FILES: Final = "REFRESHBUS_INPLACE_FILES"
#: File holding the pod's projected service-account token for the ack audience; the sidecar
#: re-reads it for every ack (the kubelet rotates it) and sends it along (protocol 1.2).
ENV_ACK_TOKEN_FILE: Final = "REFRESHBUS_ACK_TOKEN_FILE"

#: Where the shared volume is mounted in the sidecar by default.
DEFAULT_TARGET_DIR: Final = "/refreshbus"
#: Where the injector mounts the projected ack-identity token in the sidecar (a volume of
#: its own, :data:`ACK_TOKEN_VOLUME`), and how long the kubelet is asked to make it live
#: (the minimum Kubernetes allows; the kubelet renews it at 80 % of that).
ACK_TOKEN_VOLUME: Final = "refreshbus-ack-token"
ACK_TOKEN_DIR: Final = "/var/run/secrets/refreshbus.io/ack"
ACK_TOKEN_FILE: Final = "token"
ACK_TOKEN_EXPIRATION_SECONDS: Final = 600
#: Default port of the sidecar's /readyz, /livez and /metrics endpoints.
DEFAULT_HEALTH_PORT: Final = 9464


def source_dir_name(kind: str, name: str) -> str:
    """Sub-directory of the shared volume that holds one source's files, e.g.
    ``configmap-app-config``; the kind prefix keeps a ConfigMap and a Secret of the
    same name apart."""
    return f"{kind.lower()}-{name}"


#: Directory (in the shared volume) of the files kept in place for subPath file mounts.
INPLACE_DIR: Final = ".inplace"


def inplace_entry(kind: str, name: str, key: str) -> str:
    """One ``REFRESHBUS_INPLACE_FILES`` entry: ``<source dir>/<key>``."""
    return f"{source_dir_name(kind, name)}/{key}"


def inplace_path(kind: str, name: str, key: str) -> str:
    """Path, relative to the shared volume, of the in-place copy of one key: the
    ``subPath`` the injector mounts in place of the app's own subPath file mount."""
    return f"{INPLACE_DIR}/{inplace_entry(kind, name, key)}"


def split_names(value: str | None) -> tuple[str, ...]:
    """Parse a comma-separated annotation/env value into names (blanks dropped, order kept, no duplicates)."""
    if not value:
        return ()
    seen: dict[str, None] = {}
    for part in value.split(","):
        name = part.strip()
        if name:
            seen.setdefault(name, None)
    return tuple(seen)
