"""Broker topology: exchange, routing keys, binding keys and queue names.

Targeting happens at the broker. Every sidecar binds its own queue to exactly four
routing keys -- its pod, its workload, its namespace, everyone -- so an event published
under one of those keys reaches exactly the sidecars it names and no other. Keys are
literal (no wildcards in sidecar bindings), which is why a dot inside a pod name cannot
make one pod's key match another's: namespaces and workload kinds never contain dots,
so the position of every field is fixed.

See docs/protocol.md for the full description.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

#: The one durable topic exchange that carries refresh events and acks.
EXCHANGE = "refreshbus"
EXCHANGE_TYPE = "topic"

#: Durable queue shared by all operator replicas; receives every ack. This is the classic
#: queue (``ackQueueType: classic``, and every version before quorum queues).
OPERATOR_ACK_QUEUE = "refreshbus.operator.acks"
#: The same as a quorum queue (the default): replicated, so acks survive a broker node.
#: Its own name because RabbitMQ cannot turn an existing classic queue into a quorum one.
OPERATOR_ACK_QUORUM_QUEUE = "refreshbus.operator.acks.quorum"
#: Binding key of the operator's ack queue.
ACK_BINDING = "ack.#"

#: Prefix of every sidecar queue (the chart's broker permissions are written against it).
SIDECAR_QUEUE_PREFIX = "refreshbus.sidecar."
#: AMQP limits queue names to 255 bytes; the pod part is cut to leave room for the suffix.
_MAX_QUEUE_NAME = 255

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod")


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """Who a sidecar is, as far as routing is concerned."""

    namespace: str
    pod: str
    workload_kind: str
    workload_name: str

    @property
    def instance(self) -> str:
        """Stable ``<namespace>/<pod>`` string used in acks and logs."""
        return f"{self.namespace}/{self.pod}"


def pod_key(namespace: str, pod: str) -> str:
    """Routing key that reaches the sidecar of one pod."""
    return f"refresh.pod.{namespace}.{pod}"


def workload_key(namespace: str, kind: str, name: str) -> str:
    """Routing key that reaches every sidecar of one workload (Deployment, ...)."""
    return f"refresh.workload.{namespace}.{kind.lower()}.{name}"


def namespace_key(namespace: str) -> str:
    """Routing key that reaches every sidecar in a namespace."""
    return f"refresh.namespace.{namespace}"


#: Routing key that reaches every sidecar on the bus.
BROADCAST_KEY = "refresh.all"


def ack_key(namespace: str, pod: str) -> str:
    """Routing key a sidecar publishes its acks under."""
    return f"ack.{namespace}.{pod}"


def new_sidecar_queue(identity: PodIdentity) -> str:
    """A fresh name for the exclusive queue of one sidecar connection.

    The random suffix makes the name unguessable, so no other connection can declare it
    first and lock the pod out; exclusivity makes the queue unreadable by any other
    connection (every sidecar shares one broker user). The pod part is for people reading
    ``rabbitmqctl list_queues`` and may be cut short."""
    suffix = "." + secrets.token_hex(8)
    name = f"{SIDECAR_QUEUE_PREFIX}{identity.namespace}.{identity.pod}"
    return name.encode()[: _MAX_QUEUE_NAME - len(suffix)].decode(errors="ignore") + suffix


def sidecar_bindings(identity: PodIdentity) -> tuple[str, ...]:
    """The binding keys of a sidecar's queue: its pod, workload, namespace, everyone."""
    return (
        pod_key(identity.namespace, identity.pod),
        workload_key(identity.namespace, identity.workload_kind, identity.workload_name),
        namespace_key(identity.namespace),
        BROADCAST_KEY,
    )

