"""What a sidecar queue costs on a three-node RabbitMQ cluster: the exclusive classic queue
refreshbus uses, or a quorum queue (the alternative that would survive a node loss); and
what the quorum ack queue costs the operator against the classic one.

Run with ``make bench-sidecar-queues`` (or ``.venv/bin/python bench/sidecar_queue_bench.py
--queues 1000``). It starts its own three-node cluster on this host (tests/testenv), then for
each kind declares ``--queues`` queues bound to four refresh keys each, exactly as sidecars
do, and measures: declare + bind time, the cluster's memory (the nodes' Erlang ``total``)
and the nodes' CPU while the queues sit idle, then delete time. Connections are left out:
every sidecar holds one in either design. Then ``--acks`` persistent ack-sized messages
are published with confirms through one node into an ack queue of each type and consumed
with manual acks, as the operator does. Nothing is pass/fail: it prints the figures
(``--json`` writes them too); docs/broker.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "testenv"), str(ROOT / "sidecar")]

import aio_pika  # noqa: E402
from refreshbus_testenv.broker import Broker, BrokerCluster  # noqa: E402
from refreshbus_wire import routing  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cluster_memory(nodes: BrokerCluster) -> int:
    """Bytes the Erlang VMs of all nodes use (``rabbitmqctl status``: memory total)."""
    total = 0
    for node in nodes:
        status = json.loads(node.ctl("status", "--formatter", "json"))
        total += int(status["memory"]["total"]["erlang"])
    return total


def cpu_seconds(node: Broker) -> float:
    """CPU time used so far by every process of the node's process group (the Erlang VM)."""
    used = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == node.pid:
            used += int(fields[11]) + int(fields[12])
    return used / TICKS


async def declare(nodes: BrokerCluster, kind: str, count: int) -> tuple[float, list[Any]]:
    """Declare and bind ``count`` queues of ``kind``, spread over the nodes as sidecars'
    connections would be; returns the time taken and the open connections (exclusive
    queues live as long as theirs)."""
    conns = [await aio_pika.connect(node.url()) for node in nodes]
    channels = [await conn.channel() for conn in conns]
    for channel in channels:
        await channel.declare_exchange(routing.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

    async def one(i: int) -> None:
        channel = channels[i % len(channels)]
        identity = routing.PodIdentity("bench", f"pod-{i}", "Deployment", "bench")
        if kind == "classic-exclusive":
            queue = await channel.declare_queue(routing.new_sidecar_queue(identity), exclusive=True)
        else:
            queue = await channel.declare_queue(f"{routing.SIDECAR_QUEUE_PREFIX}bench.pod-{i}", durable=True,
                                                arguments={"x-queue-type": "quorum"})
        for key in routing.sidecar_bindings(identity):
            await queue.bind(routing.EXCHANGE, routing_key=key)

    start = time.monotonic()
    for batch in range(0, count, 50):  # 50 in flight, like sidecars starting together
        await asyncio.gather(*(one(i) for i in range(batch, min(count, batch + 50))))
    return time.monotonic() - start, conns


async def delete(nodes: BrokerCluster, kind: str, count: int, conns: list[Any]) -> float:
    start = time.monotonic()
    if kind == "classic-exclusive":
        for conn in conns:  # their exclusive queues go with them
            await conn.close()
    else:
        channel = await conns[0].channel()
        for i in range(count):
            await channel.queue_delete(f"{routing.SIDECAR_QUEUE_PREFIX}bench.pod-{i}")
        for conn in conns:
            await conn.close()
    while any(name.startswith(routing.SIDECAR_QUEUE_PREFIX) for name in nodes.live().list_queues()):
        await asyncio.sleep(0.2)
    return time.monotonic() - start


def measure(nodes: BrokerCluster, kind: str, count: int, idle: float) -> dict[str, float]:
    loop = asyncio.new_event_loop()
    try:
        base_memory = cluster_memory(nodes)
        seconds, conns = loop.run_until_complete(declare(nodes, kind, count))
        time.sleep(2)  # let the nodes settle before reading memory and CPU
        memory = cluster_memory(nodes) - base_memory
        before = sum(cpu_seconds(n) for n in nodes)
        loop.run_until_complete(asyncio.sleep(idle))  # the connections keep their heartbeats
        cpu = (sum(cpu_seconds(n) for n in nodes) - before) / idle
        removed = loop.run_until_complete(delete(nodes, kind, count, conns))
    finally:
        loop.close()
    return {"declare_s": seconds, "declare_per_queue_ms": 1000 * seconds / count,
            "memory_mib": memory / 2**20, "memory_per_queue_kib": memory / count / 1024,
            "idle_cpu_cores": cpu, "delete_s": removed}


async def ack_queue_rates(node: Broker, kind: str, count: int) -> dict[str, float]:
    """Acks per second into (publish, confirmed) and out of (consume, acked) an ack queue."""
    conn = await aio_pika.connect(node.url())
    channel = await conn.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange("bench-acks", aio_pika.ExchangeType.TOPIC, durable=True)
    arguments = {"x-queue-type": "quorum"} if kind == "quorum" else None
    queue = await channel.declare_queue(f"bench-acks-{kind}", durable=True, arguments=arguments)
    await queue.bind(exchange, routing.ACK_BINDING)
    body = b"x" * 700  # about an ack with its identity token
    start = time.monotonic()
    await asyncio.gather(*(exchange.publish(aio_pika.Message(body, delivery_mode=2),
                                            routing_key=routing.ack_key("bench", f"pod-{i}"))
                           for i in range(count)))
    published = time.monotonic() - start
    consumer = await conn.channel()
    await consumer.set_qos(prefetch_count=1000)  # the operator's default prefetch
    done, seen = asyncio.Event(), [0]

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        seen[0] += 1
        if seen[0] == count:
            done.set()

    start = time.monotonic()
    await (await consumer.get_queue(queue.name)).consume(on_message)
    await done.wait()
    consumed = time.monotonic() - start
    await consumer.close()
    await queue.delete(if_unused=False, if_empty=False)
    await conn.close()
    return {"publish_per_s": count / published, "consume_per_s": count / consumed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queues", type=int, default=1000, help="queues of each kind (default 1000)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement")
    parser.add_argument("--acks", type=int, default=5000, help="acks through each ack queue type")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="refreshbus-queue-bench-") as tmp:
        nodes = BrokerCluster(Path(tmp))
        try:
            nodes.start()
            idle_cpu = sum(cpu_seconds(n) for n in nodes)
            time.sleep(args.idle)
            baseline = (sum(cpu_seconds(n) for n in nodes) - idle_cpu) / args.idle
            results = {kind: measure(nodes, kind, args.queues, args.idle)
                       for kind in ("classic-exclusive", "quorum")}
            acks = {kind: asyncio.run(ack_queue_rates(nodes.nodes[0], kind, args.acks))
                    for kind in ("classic", "quorum")}
        finally:
            nodes.destroy()
    print(f"{args.queues} sidecar queues (4 bindings each) on a 3-node RabbitMQ cluster on one host; "
          f"empty cluster idles at {baseline:.2f} cores")
    print(f"{'kind':<18} {'declare s':>9} {'ms/queue':>9} {'memory MiB':>10} {'KiB/queue':>9} "
          f"{'idle cores':>10} {'delete s':>8}")
    for kind, r in results.items():
        print(f"{kind:<18} {r['declare_s']:>9.1f} {r['declare_per_queue_ms']:>9.1f} {r['memory_mib']:>10.1f} "
              f"{r['memory_per_queue_kib']:>9.1f} {r['idle_cpu_cores']:>10.2f} {r['delete_s']:>8.1f}")
    print(f"\n{args.acks} acks through the ack queue (publish with confirms, consume with manual acks, "
          "one node's connection; the quorum queue replicates to all three)")
    for kind, r in acks.items():
        print(f"{kind:<8} publish {r['publish_per_s']:>7.0f}/s   consume {r['consume_per_s']:>7.0f}/s")
    if args.json:
        figures = {"queues": args.queues, "idle_baseline_cores": baseline, "results": results,
                   "acks": args.acks, "ack_queues": acks}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
