"""A test-side peer on the bus: publish refresh events (as the operator would) and
collect the acks sidecars send back.

``TestBus`` owns one pika BlockingConnection and an exclusive, auto-deleted queue bound
to ``ack.#``, so every ack published while it is open is kept for :meth:`wait_ack`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

import pika
from refreshbus_wire import routing
from refreshbus_wire.events import (
    CONTENT_TYPE,
    Ack,
    Action,
    ProtocolError,
    RefreshEvent,
    Scope,
    Source,
    SourceKind,
    Target,
    decode,
    encode,
    new_id,
    now,
)


def make_event(
    namespace: str,
    sources: Sequence[tuple[str, str] | tuple[str, str, str | None]],
    *,
    target: Target | None = None,
    action: Action | None = None,
    event_id: str | None = None,
    deadline_seconds: float = 60,
) -> RefreshEvent:
    """A refresh event for ``sources`` = [(kind, name[, resourceVersion])]; default target:
    the whole namespace."""
    issued = now()
    return RefreshEvent(
        id=event_id or new_id(),
        origin="tests",
        target=target or Target(scope=Scope.NAMESPACE, namespace=namespace),
        sources=tuple(
            Source(kind=SourceKind(s[0]), name=s[1], namespace=namespace,
                   resource_version=s[2] if len(s) > 2 else None)
            for s in sources
        ),
        issued_at=issued,
        deadline=issued + timedelta(seconds=deadline_seconds),
        action=action,
    )


def routing_key(target: Target) -> str:
    """The routing key that reaches exactly the sidecars a target names."""
    if target.scope is Scope.ALL:
        return routing.BROADCAST_KEY
    assert target.namespace
    if target.scope is Scope.NAMESPACE:
        return routing.namespace_key(target.namespace)
    assert target.name
    if target.scope is Scope.POD:
        return routing.pod_key(target.namespace, target.name)
    assert target.kind
    return routing.workload_key(target.namespace, target.kind, target.name)


class TestBus:
    __test__ = False

    def __init__(self, url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(routing.EXCHANGE, exchange_type=routing.EXCHANGE_TYPE, durable=True)
        self.channel.confirm_delivery()
        result = self.channel.queue_declare("", exclusive=True, auto_delete=True)
        self.ack_queue = str(result.method.queue)
        self.channel.queue_bind(self.ack_queue, routing.EXCHANGE, routing_key=routing.ACK_BINDING)
        self.acks: list[Ack] = []

    def publish(self, event: RefreshEvent, key: str | None = None) -> None:
        """Publish an event under ``key`` (default: the key its target implies), confirmed."""
        self.publish_raw(encode(event), key or routing_key(event.target))

    def publish_raw(self, body: bytes, key: str) -> None:
        self.channel.basic_publish(
            routing.EXCHANGE, key, body,
            pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2))

    def collect(self, seconds: float = 0.0) -> list[Ack]:
        """Pull every ack that arrived so far (waiting up to ``seconds`` for more)."""
        deadline = time.monotonic() + seconds
        while True:
            method, _props, body = self.channel.basic_get(self.ack_queue, auto_ack=True)
            if method is None:
                if time.monotonic() >= deadline:
                    return self.acks
                self.conn.process_data_events(time_limit=0.05)
                continue
            try:
                message = decode(body)
            except ProtocolError:
                continue
            if isinstance(message, Ack):
                self.acks.append(message)

    def acks_for(self, event_id: str) -> list[Ack]:
        self.collect()
        return [a for a in self.acks if a.event_id == event_id]

    def wait_ack(self, event_id: str, pod: str | None = None, timeout: float = 20.0) -> Ack:
        """The first ack for ``event_id`` (from ``pod``, if given); AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ack in self.acks_for(event_id):
                if pod is None or ack.pod == pod:
                    return ack
            self.conn.process_data_events(time_limit=0.05)
        raise AssertionError(f"no ack for event {event_id} (pod {pod}) within {timeout}s; got {self.acks}")

    def wait_acks(self, event_id: str, count: int, timeout: float = 20.0) -> list[Ack]:
        """Wait until at least ``count`` acks for ``event_id`` arrived; returns them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            acks = self.acks_for(event_id)
            if len(acks) >= count:
                return acks
            self.conn.process_data_events(time_limit=0.05)
        raise AssertionError(f"fewer than {count} acks for {event_id} within {timeout}s: {self.acks}")

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()

    def __enter__(self) -> TestBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
