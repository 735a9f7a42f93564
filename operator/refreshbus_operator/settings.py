"""The operator's one typed configuration, and the kopf settings derived from it.

Every knob has an environment variable (``REFRESHBUS_OPERATOR_*``; the Helm chart sets
these) and most have a CLI flag (``refreshbus-operator --help``); a flag wins over the
environment. :func:`apply_kopf_settings` (run by ``refreshbus-operator`` and again by the start-up hook
``handlers.runtime.configure_kopf``) turns the
config into kopf's own settings: persistence under ``refreshbus.io`` instead of
``kopf.zalando.org``, Kubernetes Events posting, peering priority.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import kopf
from refreshbus_wire import contract

from refreshbus_operator import GROUP

ENV_PREFIX = "REFRESHBUS_OPERATOR_"
#: Same variable the sidecar reads (refreshbus_wire.pods.ENV_BROKER_URLS).
ENV_BROKER_URLS = "REFRESHBUS_BROKER_URLS"
ENV_BROKER_URLS_FILE = "REFRESHBUS_BROKER_URLS_FILE"

#: Label put on ConfigRefreshes created by auto-refresh: ``<kind>.<workload name>``.
AUTO_REFRESH_LABEL = f"{GROUP}/auto-refresh-for"
#: Annotation holding a finished round's bookkeeping needed to resume after a restart.
ROUND_ANNOTATION = f"{GROUP}/round"
#: On a rollout's child ConfigRefresh: {"name": <release record>, "revision": N}, which its
#: round puts into the event (protocol 1.3): the pods apply that revision of the record.
RELEASE_ANNOTATION = f"{GROUP}/release"
#: On a rollout's child ConfigRefreshes: the parent's name (a label value).
ROLLOUT_PARENT_LABEL = f"{GROUP}/rollout-parent"
#: On a rollout's parent: the spec it runs (a digest without rollout.paused) and the moved
#: pods' restart baselines; on its children: the parent's spec digest (docs/rollout.md).
STATE_ANNOTATION = f"{GROUP}/rollout-state"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the operator can be told. Defaults are production defaults."""

    broker_urls: tuple[str, ...] = ()
    #: Namespaces to serve; empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    standalone: bool = False
    peering_name: str | None = None
    priority: int | None = None
    #: This replica's pod name (Downward API ``metadata.name``; the chart sets it). Gives a
    #: stable, per-replica peering priority (:func:`priority_for`) and kopf's peering identity.
    #: Read from ``REFRESHBUS_OPERATOR_POD_NAME``, else ``POD_NAME``.
    pod_name: str | None = None
    #: Seconds a replica's peering keep-alive is valid: a dead active replica is replaced
    #: by a standby within about this long (kopf's default is 60).
    peering_lifetime: int = 60
    #: kopf's peering identity of this replica (set by the CLI, which hands it to kopf).
    peering_identity: str = ""
    liveness_endpoint: str | None = None
    metrics_port: int = 9465
    log_format: str = "json"  # json | plain
    verbose: bool = False
    #: Minimum seconds between two status PATCHes of one ConfigRefresh (acks are batched).
    status_flush_interval: float = 0.2
    #: After a restart, wait this long for acks still in the queue before re-publishing.
    resume_grace: float = 2.0
    #: How long an ack for an event id this replica does not know is kept before dropping.
    unknown_ack_grace: float = 10.0
    publish_retry_initial: float = 0.2
    publish_retry_max: float = 5.0
    ack_prefetch: int = 1000
    #: ``quorum``: the ack queue is replicated over the broker cluster's nodes, so acks
    #: survive a lost node (a single node holds one as well); ``classic`` for brokers without
    #: quorum queues. Switching moves the acks over by itself (docs/broker.md).
    ack_queue_type: str = "quorum"
    #: Seconds a Kubernetes read (GET, list) that failed on the way -- connection reset or
    #: refused, timeout, 429, 5xx -- keeps being retried with backoff before it fails.
    api_retry_timeout: float = 30.0
    #: What happens to an ack whose identity token does not prove it comes from the pod it
    #: speaks for: ``require`` refuses it, ``warn`` folds it anyway (both log, count and show
    #: it). ``warn`` is for the transition from sidecars older than protocol 1.2.
    ack_identity: str = "require"
    #: A round re-publishes to its silent targets this long after publishing, then at twice
    #: the previous interval, at most ``renudge_max`` apart, until its deadline.
    renudge_initial: float = 10.0
    renudge_max: float = 60.0
    auto_refresh: bool = True
    #: Also watch the Secrets opted-in workloads manage. Off (default): auto-refresh follows
    #: ConfigMaps only and the operator never lists/watches a Secret (the Helm chart grants
    #: Secret list/watch only when this is on; RBAC cannot scope list/watch to names).
    auto_refresh_secrets: bool = False
    #: A change of a watched ConfigMap/Secret is refreshed at once; further changes within
    #: this many seconds of that refresh are gathered into one refresh at the window's end.
    auto_refresh_debounce: float = 1.0
    #: What one auto-refresh watch covers: ``namespace`` (one watch on the ConfigMaps of each
    #: namespace with an opted-in workload) or ``object`` (one per ConfigMap, by name).
    #: Secrets are always watched by name. Trade-offs measured in docs/operator.md.
    auto_refresh_watch_scope: str = "namespace"
    #: At most this many auto-refresh watches (API connections); beyond it, sources are left
    #: unwatched, with a warning and ``refreshbus_operator_auto_refresh_unwatched_sources``.
    auto_refresh_max_watches: int = 1000
    #: Finished auto-created ConfigRefreshes are deleted this long after completion.
    ttl_seconds_after_finished: int = 3600
    #: ... and at most this many finished ones are kept per workload.
    history_limit: int = 5
    gc_interval: float = 60.0
    #: The Spring Cloud Bus bridge (docs/spring-bus.md): off by default. When on, it joins
    #: ``springCloudBus`` on the same brokers and serves ``spring_bus_namespaces`` only.
    spring_bus: bool = False
    #: Namespaces whose opted-in (``refreshbus.io/spring-bus: "true"``) workloads a bus refresh
    #: may refresh. Required with ``spring_bus``: bus events carry no authentication.
    spring_bus_namespaces: tuple[str, ...] = ()
    #: Without ``spec.springBus.expectedInstances``, a round collects Spring acks this long
    #: after publishing (and at least until its pods answered).
    spring_bus_answer_window: float = 5.0
    #: Set on Kubernetes Events as reportingInstance (pod name in-cluster).
    instance: str = field(default_factory=lambda: os.environ.get("HOSTNAME", "refreshbus-operator"))

    def __repr__(self) -> str:
        # The broker URLs carry credentials: a logged or printed config must not show them.
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return contract.mask_url(f"{type(self).__name__}({shown})")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def effective_priority(self) -> int:
        """Peering priority: the configured one, else derived from the pod name, else random.

        Replicas must differ: kopf pauses *every* replica while two live ones share the
        highest priority. See :func:`priority_for`."""
        if self.priority is not None:
            return self.priority
        if self.pod_name:
            return priority_for(self.pod_name)
        return random.randint(1, MAX_PRIORITY)


#: Upper bound of a derived or random peering priority (int32, as kopf stores it in JSON).
MAX_PRIORITY = 2**31 - 1
#: Alphabet of the random suffix Kubernetes appends to generated names (``generateName``,
#: apimachinery ``util/rand.String``): a ReplicaSet's pods are ``<replicaset>-<5 of these>``.
K8S_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SUFFIX_LEN = 5
_SUFFIX_SPACE = len(K8S_NAME_SUFFIX_ALPHABET) ** _SUFFIX_LEN  # 27**5 = 14,348,907 < 2**24
_SUFFIX_BITS = 24
_PREFIX_BITS = 6


def priority_for(pod_name: str) -> int:
    """A stable peering priority in ``[1, MAX_PRIORITY]`` derived from the pod name.

    Why this, not ``random.randint(1, 32767)`` (1 chance in 32,767 that two replicas draw
    the same number and both freeze):

    * Pods of one Deployment ReplicaSet are named ``<replicaset>-<suffix>``, the suffix five
      characters of a 27-letter alphabet, unique among the ReplicaSet's pods (pod names are
      unique in a namespace). The suffix is decoded as a base-27 number (< 2**24) and forms
      the low 24 bits, so **two replicas of one ReplicaSet never get the same priority**.
    * During a rolling update the old and new ReplicaSets' pods meet; the top 6 bits come
      from a SHA-256 of the ``<replicaset>`` part, so a collision across two ReplicaSets
      needs equal hash bits (1/64) *and* the same suffix (1/14,348,907): about 1 in 9.2e8.
    * Any other name (a StatefulSet's ``name-0``, a hand-made pod) uses 31 bits of its
      SHA-256: two such names collide with probability 1/(2**31 - 1), about 4.7e-10.
    * Stable: a container restarted in the same pod keeps its priority (and, with the pod
      name as kopf's peering identity, its own keep-alive entry), so it does not rank itself
      against a stale copy of itself.
    """
    base, sep, suffix = pod_name.rpartition("-")
    if sep and base and len(suffix) == _SUFFIX_LEN and all(c in K8S_NAME_SUFFIX_ALPHABET for c in suffix):
        code = 0
        for char in suffix:
            code = code * len(K8S_NAME_SUFFIX_ALPHABET) + K8S_NAME_SUFFIX_ALPHABET.index(char)
        prefix = int.from_bytes(hashlib.sha256(base.encode()).digest()[:8], "big") % (1 << _PREFIX_BITS)
        return (prefix << _SUFFIX_BITS) + code + 1  # <= 2**30
    digest = int.from_bytes(hashlib.sha256(pod_name.encode()).digest()[:8], "big")
    return digest % MAX_PRIORITY + 1


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _split(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.replace("\n", ",").replace(" ", ",").split(",") if p.strip())


_FIELDS: dict[str, type] = {
    "namespaces": tuple,
    "standalone": bool,
    "peering_name": str,
    "priority": int,
    "pod_name": str,
    "peering_lifetime": int,
    "liveness_endpoint": str,
    "metrics_port": int,
    "log_format": str,
    "verbose": bool,
    "status_flush_interval": float,
    "resume_grace": float,
    "unknown_ack_grace": float,
    "publish_retry_initial": float,
    "publish_retry_max": float,
    "ack_prefetch": int,
    "ack_queue_type": str,
    "api_retry_timeout": float,
    "ack_identity": str,
    "renudge_initial": float,
    "renudge_max": float,
    "auto_refresh": bool,
    "auto_refresh_secrets": bool,
    "auto_refresh_debounce": float,
    "auto_refresh_watch_scope": str,
    "auto_refresh_max_watches": int,
    "ttl_seconds_after_finished": int,
    "history_limit": int,
    "gc_interval": float,
    "instance": str,
    "spring_bus": bool,
    "spring_bus_namespaces": tuple,
    "spring_bus_answer_window": float,
}


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build the config from ``REFRESHBUS_OPERATOR_<FIELD>`` variables, then ``overrides``
    (CLI values; ``None`` means "not given")."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, kind in _FIELDS.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            continue
        try:
            if kind is tuple:
                values[name] = _split(raw)
            elif kind is bool:
                values[name] = _bool(raw)
            else:
                values[name] = kind(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from None
    urls: tuple[str, ...] = ()
    if env.get(ENV_BROKER_URLS):
        urls = contract.parse_broker_urls(env[ENV_BROKER_URLS])
    elif env.get(ENV_BROKER_URLS_FILE):
        with open(env[ENV_BROKER_URLS_FILE], encoding="utf-8") as fh:
            urls = contract.parse_broker_urls(fh.read())
    if urls:
        values["broker_urls"] = urls
    if "pod_name" not in values and env.get("POD_NAME"):
        values["pod_name"] = env["POD_NAME"]
    for key, value in overrides.items():
        if value is None or value == ():
            continue
        values[key] = tuple(value) if isinstance(value, list) else value
    config = Config(**values)
    if config.log_format not in {"json", "plain"}:
        raise ValueError(f"log format must be json or plain, got {config.log_format!r}")
    if config.ack_identity not in {"require", "warn"}:
        raise ValueError(f"ack identity mode must be require or warn, got {config.ack_identity!r}")
    if config.ack_queue_type not in {"quorum", "classic"}:
        raise ValueError(
            f"{ENV_PREFIX}ACK_QUEUE_TYPE must be quorum or classic, got {config.ack_queue_type!r}"
        )
    if config.status_flush_interval < 0:
        raise ValueError("status flush interval must be >= 0")
    if config.auto_refresh_watch_scope not in {"namespace", "object"}:
        raise ValueError(
            f"{ENV_PREFIX}AUTO_REFRESH_WATCH_SCOPE must be namespace or object, "
            f"got {config.auto_refresh_watch_scope!r}"
        )
    if config.auto_refresh_max_watches < 1:
        raise ValueError(f"{ENV_PREFIX}AUTO_REFRESH_MAX_WATCHES must be >= 1")
    if config.api_retry_timeout < 0:
        raise ValueError(f"{ENV_PREFIX}API_RETRY_TIMEOUT must be >= 0 (0: never retry a read)")
    if not 0 < config.renudge_initial <= config.renudge_max:
        raise ValueError("re-nudge intervals must satisfy 0 < renudge_initial <= renudge_max")
    if config.spring_bus and not config.spring_bus_namespaces:
        raise ValueError(
            f"{ENV_PREFIX}SPRING_BUS is on but {ENV_PREFIX}SPRING_BUS_NAMESPACES is empty: name the "
            "namespaces a Spring bus refresh may reach (bus events carry no authentication)"
        )
    if config.spring_bus_answer_window < 0:
        raise ValueError(f"{ENV_PREFIX}SPRING_BUS_ANSWER_WINDOW must be >= 0")
    for number, url in enumerate(config.broker_urls, 1):
        contract.check_broker_url(number, url)
    return config


def apply_kopf_settings(settings: kopf.OperatorSettings, config: Config) -> None:
    """Point kopf's own bookkeeping at our API group and set posting/peering."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # We post our own, meaningful Events (events.py); kopf's per-handler ones are noise.
    settings.posting.enabled = False
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "refreshbus-operator"
    settings.posting.reporting_instance = config.instance
    settings.peering.priority = config.effective_priority()
    settings.peering.stealth = True
    settings.peering.lifetime = config.peering_lifetime
    # Watches reconnect on their own; keep a bounded server-side timeout so a silently dead
    # connection is noticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 8
