"""``refreshbus-operator``: the command line of the refreshbus operator."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Sequence

from refreshbus_operator import settings

DESCRIPTION = """\
The refreshbus operator. It watches ConfigRefresh objects (refreshbus.io/v1alpha1), resolves
the pods they target, publishes one refresh event per round on RabbitMQ (exchange
"refreshbus", publisher confirms), collects the sidecars' acks from the durable queue
"refreshbus.operator.acks" and writes the per-pod outcome into the object's status. With
auto-refresh on, it also watches the ConfigMaps/Secrets managed by workloads annotated
refreshbus.io/auto-refresh: "true" and creates a ConfigRefresh when their content changes.

Kubernetes access: in-cluster service account, else $KUBECONFIG / ~/.kube/config.
Every option can also be set as an environment variable REFRESHBUS_OPERATOR_<NAME>
(e.g. REFRESHBUS_OPERATOR_NAMESPACES="a b", REFRESHBUS_OPERATOR_METRICS_PORT=9465);
broker URLs come from REFRESHBUS_BROKER_URLS (comma-separated, failover list) or the file
named by REFRESHBUS_BROKER_URLS_FILE. A flag wins over the environment.
"""

EPILOG = """\
examples:
  refreshbus-operator --standalone --namespace shop --broker-url amqp://user:pw@rabbitmq:5672/%2F
  refreshbus-operator --all-namespaces --peering refreshbus --liveness http://0.0.0.0:8080/healthz

`refreshbus-operator cleanup --help`: remove what the operator made at run time (the
chart's post-delete hook runs it on `helm uninstall`).

HA: run two or more replicas with --peering NAME (the KopfPeering object from
crds/kopf-peering.yaml); the one with the highest --priority acts, the others stand by
and take over when it stops renewing its keep-alive. Without --priority it is derived
from the pod name (REFRESHBUS_OPERATOR_POD_NAME or POD_NAME, Downward API metadata.name:
distinct for the pods of one ReplicaSet), else drawn at random.
Documentation: docs/operator.md.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refreshbus-operator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NS",
        help="serve only this namespace (repeatable; default: all namespaces)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (default)")
    p.add_argument(
        "--broker-url",
        dest="broker_urls",
        action="append",
        metavar="URL",
        help="AMQP URL of a RabbitMQ node (repeatable: a failover list)",
    )
    peer = p.add_mutually_exclusive_group()
    peer.add_argument(
        "--standalone",
        action="store_true",
        default=None,
        help="no peering: act alone (one replica, strategy Recreate)",
    )
    peer.add_argument(
        "--peering",
        dest="peering_name",
        metavar="NAME",
        help="take part in kopf peering NAME (HA: only the highest priority acts)",
    )
    p.add_argument(
        "--priority",
        type=int,
        help="peering priority (must differ per replica; default: derived from the pod name, else random)",
    )
    p.add_argument(
        "--liveness",
        dest="liveness_endpoint",
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics port (0 disables; default 9465)")
    p.add_argument("--log-format", choices=["json", "plain"], help="log format (default json)")
    p.add_argument("-v", "--verbose", action="store_true", default=None, help="debug logging")
    p.add_argument(
        "--status-flush-interval",
        type=float,
        metavar="SECONDS",
        help="minimum time between two status PATCHes of one ConfigRefresh (default 0.2)",
    )
    p.add_argument(
        "--no-auto-refresh",
        dest="auto_refresh",
        action="store_false",
        default=None,
        help="do not watch ConfigMaps/Secrets of auto-refresh workloads",
    )
    p.add_argument(
        "--auto-refresh-secrets",
        dest="auto_refresh_secrets",
        action="store_true",
        default=None,
        help="auto-refresh on Secret changes too (needs list/watch on Secrets; default: "
        "ConfigMaps only, Secrets are never listed or watched)",
    )
    p.add_argument(
        "--ack-identity",
        choices=["require", "warn"],
        help="an ack whose identity token does not prove it comes from the pod it speaks for is "
        "refused (require, the default) or folded anyway (warn, while sidecars older than "
        "protocol 1.2 remain); both log, count and show it",
    )
    p.add_argument(
        "--ack-queue-type",
        choices=["quorum", "classic"],
        help="the ack queue is a quorum queue (the default: replicated, acks survive a lost "
        "broker node) or a classic one (brokers without quorum queues); switching moves the "
        "queued acks over",
    )
    p.add_argument(
        "--ttl-seconds-after-finished",
        type=int,
        metavar="SECONDS",
        help="delete finished auto-created ConfigRefreshes after this long (default 3600)",
    )
    p.add_argument(
        "--history-limit",
        type=int,
        metavar="N",
        help="keep at most N finished auto-created ConfigRefreshes per workload (default 5)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["cleanup"]:
        from refreshbus_operator import uninstall

        return uninstall.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        config = settings.from_env(
            namespaces=args.namespaces,
            broker_urls=args.broker_urls,
            standalone=args.standalone,
            peering_name=args.peering_name,
            priority=args.priority,
            liveness_endpoint=args.liveness_endpoint,
            metrics_port=args.metrics_port,
            log_format=args.log_format,
            verbose=args.verbose,
            status_flush_interval=args.status_flush_interval,
            auto_refresh=args.auto_refresh,
            auto_refresh_secrets=args.auto_refresh_secrets,
            ttl_seconds_after_finished=args.ttl_seconds_after_finished,
            history_limit=args.history_limit,
            ack_identity=args.ack_identity,
            ack_queue_type=args.ack_queue_type,
        )
    except (ValueError, OSError) as exc:
        print(f"refreshbus-operator: {exc}", file=sys.stderr)
        return 2
    if args.all_namespaces:
        config = dataclasses.replace(config, namespaces=())
    if not config.broker_urls:
        print("refreshbus-operator: no broker URL (--broker-url or REFRESHBUS_BROKER_URLS)", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, priority=config.effective_priority())
    if config.pod_name and config.peering_name:
        # kopf's peering identity = the pod name (its documented POD_ID): a container that
        # restarts in the same pod replaces its own keep-alive instead of meeting a stale
        # entry with its own (stable) priority and pausing until that expires.
        os.environ.setdefault("POD_ID", config.pod_name)
    # Chosen here (as kopf would: POD_ID, else user@host/time/random) and handed to kopf, so
    # the operator's own view of peering (runtime/pause.py) knows which entry is its own.
    identity = os.environ.get("POD_ID") or (
        f"{getpass.getuser()}@{socket.gethostname()}/{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
        f"/{secrets.token_hex(2)}"
    )
    config = dataclasses.replace(config, peering_identity=identity)

    import kopf

    import refreshbus_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(
        verbose=config.verbose,
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    # Settings are applied before kopf starts (peering keep-alives begin concurrently with
    # the start-up handlers); the @kopf.on.startup hook applies them again for embedders.
    kopf_settings = kopf.OperatorSettings()
    settings.apply_kopf_settings(kopf_settings, config)
    kopf.run(
        settings=kopf_settings,
        standalone=config.standalone if config.peering_name is None else False,
        peering_name=config.peering_name,
        priority=config.priority,
        identity=identity,  # type: ignore[arg-type]  # a NewType of str kopf does not export
        liveness_endpoint=config.liveness_endpoint,
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        memo=kopf.Memo(config=config),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
