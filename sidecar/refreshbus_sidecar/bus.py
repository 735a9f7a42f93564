"""The broker side: one pika BlockingConnection, used only from the connection thread.

The caller blocks in :meth:`Bus.wait` (the socket, via
``process_data_events(time_limit=...)``), deliveries are queued in :attr:`Bus.pending`
and handed over between waits, acks go out with publisher confirms, and deliveries are
acknowledged to the broker only after their ack was confirmed (at-least-once; the
refresher is idempotent by event id). Another thread reaches the connection only
through :mod:`refreshbus_sidecar.handoff`.

The queue is exclusive to the connection and gets a fresh unguessable name each time it
is declared: all sidecars share one broker user, and exclusivity is what stops one pod
from reading, binding or deleting another pod's queue. It goes away with the connection;
what was published meanwhile is caught up by the level-triggered sync after every
connect (and the operator re-sends to pods that have not answered). Each ack carries the
pod's projected token, re-read from its file every time because the kubelet rotates it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from refreshbus_wire.contract import mask_url
from refreshbus_wire.events import CONTENT_TYPE, Ack, encode
from refreshbus_wire.routing import (
    EXCHANGE,
    EXCHANGE_TYPE,
    PodIdentity,
    ack_key,
    new_sidecar_queue,
    sidecar_bindings,
)

log = logging.getLogger("refreshbus.sidecar.bus")

#: Everything pika raises when the broker or the network goes away.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPError,
    OSError,
)

#: Unacknowledged deliveries the broker may push before we ack (refreshes are handled one by one).
PREFETCH = 16


class BusError(RuntimeError):
    """No broker could be reached (or the topology could not be declared)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    tag: int
    body: bytes
    routing_key: str
    redelivered: bool
    #: The connection it arrived on: its tag means nothing on any other.
    connection: pika.BlockingConnection = field(repr=False, compare=False)


class Backoff:
    """Reconnect delays: ``initial``, doubling up to ``maximum``, each with +-20 % jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.initial


class Bus:
    """A consumer of this pod's queue that also publishes the pod's acks."""

    def __init__(
        self,
        urls: Sequence[str],
        identity: PodIdentity,
        *,
        heartbeat: int = 30,
        ca_file: Path | None = None,
        token_file: Path | None = None,
    ) -> None:
        self.urls = list(urls)
        self.identity = identity
        self.heartbeat = heartbeat
        self.ca_file = ca_file
        self.token_file = token_file
        #: The current queue ("" while disconnected).
        self.queue = ""
        self.pending: deque[Delivery] = deque()
        self.connected_to: str | None = None
        #: Set when the broker cancelled our consumer (its queue was deleted):
        #: :meth:`resubscribe` is due.
        self.consumer_cancelled = False
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    def connect(self) -> None:
        """Try every broker URL once, in random order; declare topology and start consuming.

        Raises:
            BusError: no URL worked (the message lists why, with passwords masked).
        """
        self.close()
        urls = list(self.urls)
        random.shuffle(urls)
        errors: list[str] = []
        for url in urls:
            try:
                self._open(url)
                self.connected_to = mask_url(url)
                return
            except BROKER_ERRORS as exc:
                errors.append(f"{mask_url(url)}: {_describe(exc)}")
                self.close()
        raise BusError("; ".join(errors) or "no broker URLs")

    def _open(self, url: str) -> None:
        params = pika.URLParameters(url)
        params.heartbeat = self.heartbeat
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.stack_timeout = 10
        params.client_properties = {"connection_name": f"refreshbus-sidecar {self.identity.instance}"}
        if params.ssl_options is not None and self.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
        self._conn = pika.BlockingConnection(params)
        channel = self._conn.channel()
        channel.exchange_declare(EXCHANGE, exchange_type=EXCHANGE_TYPE, durable=True)
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=PREFETCH)
        channel.add_on_cancel_callback(self._on_cancel)
        self._channel = channel
        self._subscribe()

    def _subscribe(self) -> None:
        """Declare a new exclusive queue for this pod, bind it and consume from it."""
        assert self._channel is not None
        self.queue = new_sidecar_queue(self.identity)
        self._channel.queue_declare(self.queue, exclusive=True)
        for key in sidecar_bindings(self.identity):
            self._channel.queue_bind(self.queue, EXCHANGE, routing_key=key)
        self._channel.basic_consume(self.queue, self._on_message, auto_ack=False)
        self.consumer_cancelled = False

    def resubscribe(self) -> None:
        """After the broker cancelled our consumer: declare, bind and consume again on the
        same connection, so acks in flight for earlier deliveries still go out."""
        log.warning("the broker cancelled the consumer of %s (queue deleted?): declaring it again",
                    self.queue)
        self._subscribe()

    def _on_message(self, _channel: BlockingChannel, method: pika.spec.Basic.Deliver,
                    _properties: pika.BasicProperties, body: bytes) -> None:
        assert self._conn is not None
        self.pending.append(Delivery(
            tag=method.delivery_tag, body=body, routing_key=method.routing_key,
            redelivered=bool(method.redelivered), connection=self._conn))

    def _on_cancel(self, *_frame: object) -> None:
        # Called while pika dispatches events: only note it, the caller's loop resubscribes.
        self.consumer_cancelled = True

    def wait(self, timeout: float) -> None:
        """Block on the socket for up to ``timeout`` seconds (heartbeats, deliveries)."""
        assert self._conn is not None
        self._conn.process_data_events(time_limit=timeout)

    def publish_ack(self, ack: Ack) -> None:
        """Publish an ack, with the pod's identity token, and wait for the broker's confirm
        (raises on nack or disconnect)."""
        assert self._channel is not None
        if self.token_file is not None:
            ack = replace(ack, identity_token=self._read_token())
        self._channel.basic_publish(
            EXCHANGE,
            ack_key(ack.namespace, ack.pod),
            encode(ack),
            pika.BasicProperties(
                content_type=CONTENT_TYPE, delivery_mode=2, message_id=ack.id,
                correlation_id=ack.event_id, type="ack"),
        )

    def _read_token(self) -> str | None:
        assert self.token_file is not None
        try:
            return self.token_file.read_text().strip() or None
        except OSError as exc:
            # The ack still goes out: the operator then says, per its mode, why it was refused.
            log.warning("cannot read the ack identity token %s: %s", self.token_file, exc.strerror)
            return None

    def settle(self, tag: int) -> None:
        """Acknowledge a delivery to the broker (it is done with: handled or dropped)."""
        assert self._channel is not None
        self._channel.basic_ack(tag)

    def close(self) -> None:
        """Close quietly; the queue and its unacknowledged deliveries go with the connection."""
        self.pending.clear()
        self.consumer_cancelled = False
        conn, self._conn, self._channel = self._conn, None, None
        self.connected_to = None
        self.queue = ""
        if conn is not None and conn.is_open:
            with contextlib.suppress(*BROKER_ERRORS):
                conn.close()


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    refused = pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError
    if isinstance(exc, refused):
        return f"access refused (check the broker user and password): {text}"
    return f"{type(exc).__name__}: {text}"
