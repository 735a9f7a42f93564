"""The operator's broker I/O on the real RabbitMQ, on one event loop: confirmed, pipelined
publishing; reconnect after the broker returns; a cancelled publish leaves the publisher
working; acks acknowledged to the broker only when settled, redelivered otherwise."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractQueue
from refreshbus_operator.acks import AckConsumer, Tag
from refreshbus_operator.broker import declare_topology
from refreshbus_operator.publishing import Publisher
from refreshbus_wire import routing

pytestmark = pytest.mark.integration


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def bound_queue(url: str, key: str) -> tuple[AbstractConnection, AbstractQueue]:
    conn = await aio_pika.connect(url)
    channel = await conn.channel()
    exchange = await channel.declare_exchange(routing.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"test.{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(exchange, routing_key=key)
    return conn, queue


async def drain(queue: AbstractQueue) -> list[bytes]:
    bodies = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        bodies.append(message.body)
    return bodies


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def test_a_job_of_500_messages_is_confirmed_and_delivered(running_broker):
    url = running_broker.url("refreshbus-operator")

    async def main() -> None:
        conn, queue = await bound_queue(url, "refresh.pod.bench.#")
        publisher = Publisher([url])
        await publisher.start()
        try:
            messages = [(routing.pod_key("bench", f"p{i}"), f"m{i}".encode()) for i in range(500)]
            await publisher.publish(messages, timeout=30)
            bodies: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(bodies) < 500 and time.monotonic() < deadline:
                bodies += await drain(queue)
            assert sorted(bodies) == sorted(body for _key, body in messages)
            assert publisher.alive()
        finally:
            await publisher.stop()
            await conn.close()

    run(main())


def test_a_cancelled_publish_leaves_the_publisher_working(running_broker):
    url = running_broker.url("refreshbus-operator")

    async def main() -> None:
        publisher = Publisher([url], retry_initial=0.1, retry_max=0.5)
        await publisher.start()
        try:
            await until(lambda: publisher.connected, 20, "the publisher connection")
            running_broker.stop()
            retries: list[str] = []
            job = asyncio.create_task(
                publisher.publish([("refresh.all", b"old")], timeout=60, on_retry=retries.append)
            )
            await until(lambda: retries, 20, "a retry while the broker is down")
            job.cancel()  # a superseded round's publish
            await asyncio.gather(job, return_exceptions=True)
            running_broker.start()
            conn, queue = await bound_queue(url, "refresh.all")
            try:
                await publisher.publish([("refresh.all", b"new")], timeout=30)
                await asyncio.sleep(0.2)
                assert await drain(queue) == [b"new"]
            finally:
                await conn.close()
            assert publisher.alive()
        finally:
            await publisher.stop()

    run(main())


def test_only_settled_acks_are_acknowledged_to_the_broker(running_broker):
    url = running_broker.url("refreshbus-operator")
    key = routing.ack_key("ns", "pod")

    async def main() -> None:
        # The consumer reads the real shared ack queue: start from it empty.
        conn = await aio_pika.connect(url)
        channel = await conn.channel()
        exchange, queue = await declare_topology(channel)
        await queue.purge()
        received: list[tuple[bytes, Tag]] = []
        consumer = AckConsumer([url], deliver=lambda body, tag: received.append((body, tag)))
        await consumer.start()
        try:
            consumer.set_active(True)
            for body in (b"written", b"not-written"):
                await exchange.publish(aio_pika.Message(body), routing_key=key)
            await until(lambda: len(received) == 2, 20, "two deliveries")
            consumer.settle([tag for body, tag in received if body == b"written"])
            await asyncio.sleep(0.5)
            assert consumer.alive()
        finally:
            await consumer.stop()
        # The unsettled one went back to the queue when the consumer closed; the settled one did not.
        left = await drain(queue)
        await conn.close()
        assert left == [b"not-written"]

    run(main())


def test_the_consumer_nudges_after_a_broker_restart_and_is_idle_without_rounds(running_broker):
    url = running_broker.url("refreshbus-operator")

    async def main() -> None:
        nudges: list[int] = []
        consumer = AckConsumer([url], deliver=lambda body, tag: None, retry_initial=0.1, retry_max=0.5)
        consumer.on_reconnect = lambda: nudges.append(1)
        await consumer.start()
        try:
            await asyncio.sleep(0.3)
            assert not consumer.connected  # no round in flight: not consuming
            consumer.set_active(True)
            await until(lambda: consumer.connected, 20, "the consumer connection")
            assert nudges == []  # the first connection is not a reconnect
            running_broker.restart()
            await until(lambda: nudges, 60, "a nudge after the reconnect")
            assert consumer.connected
            assert nudges == [1]
            consumer.set_active(False)
            await until(lambda: not consumer.connected, 10, "the consumer to go idle")
            assert consumer.alive()
        finally:
            await consumer.stop()

    run(main())
