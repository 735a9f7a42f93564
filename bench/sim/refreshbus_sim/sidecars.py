"""Simulated sidecars: thousands in one asyncio process, on the real broker.

Per simulated pod, what a real sidecar does on the bus (refreshbus_sidecar.bus): its own
AMQP connection (``pods_per_connection=1``, the default: the broker carries one
connection per pod, as in a real fleet), the exchange declared, a fresh exclusive queue
``refreshbus.sidecar.<ns>.<pod>.<random>`` bound to the pod's four keys (pod, workload,
namespace, everyone), consumed with manual acks and the sidecar's prefetch; each event is
answered after ``delay`` with an ack carrying the pod's identity token, published
persistent with a publisher confirm. Nothing is fetched, written or reloaded: the answer
is ``ok`` (or ``failed`` with probability ``failure_rate``), so what is measured is the
operator, the broker and the API server.

``pods_per_connection > 1`` shares a connection (one channel per pod) between pods, for
machines whose file descriptor limit cannot hold one connection per pod.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage
from refreshbus_wire import Ack, AckResult, RefreshEvent, Timings, decode, encode, new_id, now, routing
from refreshbus_wire.events import CONTENT_TYPE

log = logging.getLogger("refreshbus.sim")

#: The real sidecar's prefetch (refreshbus_sidecar.bus.PREFETCH).
PREFETCH = 16
#: Connections being opened at once.
CONNECT_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class SimPod:
    identity: routing.PodIdentity
    token: str | None


@dataclass
class Behaviour:
    """How every simulated sidecar answers."""

    #: Seconds from delivery to ack: uniform in [delay_min, delay_max].
    delay_min: float = 0.0
    delay_max: float = 0.0
    #: Probability that an answer is ``failed`` instead of ``ok``.
    failure_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def delay(self) -> float:
        return self.rng.uniform(self.delay_min, self.delay_max) if self.delay_max > 0 else 0.0

    def fails(self) -> bool:
        return self.failure_rate > 0 and self.rng.random() < self.failure_rate


class Simulator:
    """Many simulated sidecars in this process's event loop (use on that loop only)."""

    def __init__(self, url: str, behaviour: Behaviour | None = None, pods_per_connection: int = 1) -> None:
        if pods_per_connection < 1:
            raise ValueError("pods_per_connection must be at least 1")
        self.url = url
        self.behaviour = behaviour or Behaviour()
        self.pods_per_connection = pods_per_connection
        self.connections: list[AbstractConnection] = []
        #: Every delivery: (pod, event id, monotonic time it arrived).
        self.deliveries: list[tuple[str, str, float]] = []
        self.acks_sent = 0
        self.errors = 0
        self._answers: set[asyncio.Task[None]] = set()

    async def add(self, pods: Sequence[SimPod]) -> None:
        """Connect, declare and consume for ``pods`` (ready when this returns)."""
        slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
        groups = [pods[i:i + self.pods_per_connection] for i in range(0, len(pods), self.pods_per_connection)]

        async def connect(group: Sequence[SimPod]) -> None:
            async with slots:
                name = f"refreshbus-sim {group[0].identity.instance} (+{len(group) - 1})"
                conn = await aio_pika.connect(self.url, timeout=30,
                                              client_properties={"connection_name": name})
                self.connections.append(conn)
                for pod in group:
                    await self._subscribe(conn, pod)

        await asyncio.gather(*(connect(g) for g in groups))

    async def _subscribe(self, conn: AbstractConnection, pod: SimPod) -> None:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(routing.EXCHANGE, routing.EXCHANGE_TYPE, durable=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(routing.new_sidecar_queue(pod.identity), exclusive=True)
        for key in routing.sidecar_bindings(pod.identity):
            await queue.bind(exchange, routing_key=key)

        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.create_task(self._answer(pod, exchange, message))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)

        await queue.consume(on_message, no_ack=False)

    async def _answer(
        self, pod: SimPod, exchange: AbstractExchange, message: AbstractIncomingMessage
    ) -> None:
        received = now()
        try:
            event = decode(message.body)
            if not isinstance(event, RefreshEvent):
                await message.ack()
                return
            self.deliveries.append((pod.identity.pod, event.id, time.monotonic()))
            delay = self.behaviour.delay()
            if delay:
                await asyncio.sleep(delay)
            failed = self.behaviour.fails()
            ack = Ack(
                id=new_id(),
                event_id=event.id,
                namespace=pod.identity.namespace,
                pod=pod.identity.pod,
                result=AckResult.FAILED if failed else AckResult.OK,
                received_at=received,
                config_hash="sha256:simulated",
                timings=Timings(written_ms=0.0, reloaded_ms=delay * 1000),
                error="simulated failure" if failed else None,
                identity_token=pod.token,
            )
            await exchange.publish(
                aio_pika.Message(encode(ack), content_type=CONTENT_TYPE,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=ack.id,
                                 correlation_id=ack.event_id, type="ack"),
                routing_key=routing.ack_key(ack.namespace, ack.pod),
            )
            self.acks_sent += 1
            await message.ack()
        except Exception as exc:  # a simulated pod fails alone; the count says how many did
            self.errors += 1
            log.warning("simulated sidecar %s: %s", pod.identity.instance, exc)

    async def close(self) -> None:
        for task in list(self._answers):
            task.cancel()
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)
        self.connections.clear()
