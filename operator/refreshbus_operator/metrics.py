"""Prometheus metrics of the operator (served on ``--metrics-port``, default 9465).

Names are prefixed ``refreshbus_operator_``; see docs/operator.md for the list.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REFRESHES = Counter(
    "refreshbus_operator_refreshes_total",
    "Refresh rounds finished, by final phase (Succeeded, PartiallyFailed, Failed, TimedOut).",
    ["result"],
)
REFRESH_LATENCY = Histogram(
    "refreshbus_operator_refresh_duration_seconds",
    "End-to-end time of a refresh round: start (targets resolved) to final phase.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
ACK_LATENCY = Histogram(
    "refreshbus_operator_ack_latency_seconds",
    "Time from publishing a refresh event to receiving one pod's ack.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
ACKS = Counter(
    "refreshbus_operator_acks_total",
    "Acks consumed, by what happened to them: folded, duplicate, unknown_event, late, not_target, "
    "malformed, refused (identity did not check out, ackIdentity=require).",
    ["outcome"],
)
ACK_IDENTITY = Counter(
    "refreshbus_operator_ack_identity_checks_total",
    "Acks checked against their sender's identity token: verified, missing, invalid, forged, unverifiable.",
    ["result"],
)
TOKEN_REVIEWS = Counter(
    "refreshbus_operator_token_reviews_total",
    "TokenReviews made to check ack identity tokens (answered, error); cached per token.",
    ["result"],
)
POD_RESULTS = Counter(
    "refreshbus_operator_pod_results_total",
    "Per-pod results folded into status (ok, unchanged, failed, timeout).",
    ["result"],
)
PUBLISHED = Counter(
    "refreshbus_operator_published_messages_total", "Refresh messages confirmed by the broker."
)
PUBLISH_RETRIES = Counter(
    "refreshbus_operator_publish_retries_total", "Publish attempts repeated because of broker trouble."
)
BROKER_CONNECTED = Gauge(
    "refreshbus_operator_broker_connected",
    "1 while the connection is open (role: publisher or consumer).",
    ["role"],
)
ACK_QUEUE_FALLBACK = Gauge(
    "refreshbus_operator_ack_queue_fallback",
    "1 while the ack queue is the classic one although ackQueueType is quorum: the broker refused "
    "the operator's user the quorum queue (role: publisher or consumer; docs/broker.md).",
    ["role"],
)
STATUS_PATCHES = Counter("refreshbus_operator_status_patches_total", "PATCHes of ConfigRefresh status.")
API_REQUESTS = Counter(
    "refreshbus_operator_api_requests_total", "Kubernetes API requests made by refreshbus code.", ["verb"]
)
API_RETRIES = Counter(
    "refreshbus_operator_api_retries_total",
    "Kubernetes reads asked again after a transient failure.",
    ["verb", "reason"],
)
IN_FLIGHT = Gauge("refreshbus_operator_refreshes_in_flight", "Refresh rounds not final yet.")
AUTO_REFRESHES = Counter(
    "refreshbus_operator_auto_refreshes_total", "ConfigRefreshes created by auto-refresh."
)
INJECTION_SKIPPED = Counter(
    "refreshbus_operator_injection_skipped_total",
    "Pods that asked for the sidecar and were created without it (webhook down or not called).",
    ["namespace"],
)


def serve(port: int) -> None:
    """Start the metrics HTTP endpoint (no-op for port 0)."""
    if port:
        start_http_server(port)
SOURCE_UPDATES = Counter(
    "refreshbus_operator_source_updates_total",
    "Updates seen on watched ConfigMaps/Secrets of auto-refresh workloads, by kind of update "
    "(content, metadata: a metadata-only update that triggers nothing).",
    ["update"],
)
WATCHED_SOURCES = Gauge(
    "refreshbus_operator_watched_sources", "ConfigMaps/Secrets of opted-in workloads that are watched."
)
WATCHES = Gauge(
    "refreshbus_operator_auto_refresh_watches",
    "Auto-refresh watches running (one API connection each; bounded by auto_refresh_max_watches).",
)
UNWATCHED_SOURCES = Gauge(
    "refreshbus_operator_auto_refresh_unwatched_sources",
    "ConfigMaps/Secrets of opted-in workloads left unwatched because auto_refresh_max_watches was reached.",
)
