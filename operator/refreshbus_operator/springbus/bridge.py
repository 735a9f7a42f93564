"""The bridge between the Spring Cloud Bus (``springCloudBus``) and refreshbus.

One task on kopf's event loop (aio-pika), on its own broker :class:`~refreshbus_operator.broker.Link`:

* It joins the bus as Spring's instances do: the ``springCloudBus`` topic exchange (declared
  exactly as Spring declares it, so neither side is refused), an exclusive auto-delete queue
  of its own bound ``#``.
* A ``RefreshRemoteApplicationEvent`` becomes one ConfigRefresh per group of matching pods
  (same managed sources) in each namespace the bridge serves -- only pods whose workload
  opted in with ``refreshbus.io/spring-bus: "true"``, matched as a Spring *receiver* matches
  (no ``:**`` expansion). Every pod that then refreshes successfully is acked back on the bus
  as Spring acks (``AckRemoteApplicationEvent``, its bus id ``<app>:<pod>``).
* A ConfigRefresh with ``spec.springBus`` publishes a ``RefreshRemoteApplicationEvent`` (its
  event id = the round's) and the Spring acks for it are collected in ``status.springBus``.
* Everything else (other event types, acks for others, malformed JSON, our own messages) is
  counted and logged, never acted on and never re-published.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from prometheus_client import Counter
from refreshbus_wire import new_id, now
from refreshbus_wire import springbus as wire
from refreshbus_wire.pods import ANN_SPRING_BUS

from refreshbus_operator import API_VERSION, GROUP, KIND
from refreshbus_operator.autorefresh import gc_victims
from refreshbus_operator.broker import Heartbeat, Link, backoff, describe
from refreshbus_operator.kube import ApiError, Kube, cfr_path, pods_path
from refreshbus_operator.records import ObjectRef
from refreshbus_operator.settings import Config
from refreshbus_operator.springbus.answers import SpringAnswers
from refreshbus_operator.targets import Pod, pod_from_json
from refreshbus_operator.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "refreshbus_operator_spring_bus_messages_total",
    "Messages the Spring bus bridge consumed from springCloudBus, by what it did with them: refresh "
    "(ConfigRefreshes created), no_target (a refresh no opted-in pod matched), own (sent by this bridge), "
    "ack (for one of our events), foreign_ack, environment_change, shutdown, unknown_type, no_origin, "
    "malformed, overflow (dropped: the bridge was too far behind), failed (the API refused).",
    ["outcome"],
)
ACKS_SENT = Counter(
    "refreshbus_operator_spring_bus_acks_total",
    "Spring acks (AckRemoteApplicationEvent) the bridge sent for refreshbus pods, by result (sent, failed).",
    ["result"],
)

#: Our queue: ``springCloudBus.refreshbus.<random>`` (Spring's are ``springCloudBus.anonymous.*``).
QUEUE_PREFIX = f"{wire.EXCHANGE}.refreshbus."
#: Labels and annotations on the ConfigRefreshes the bridge creates.
LABEL_EVENT = f"{GROUP}/spring-bus-event"
LABEL_ORIGIN = f"{GROUP}/spring-bus-origin"
ANN_EVENT_ID = f"{GROUP}/spring-bus-event-id"
ANN_ORIGIN = f"{GROUP}/spring-bus-origin"
ANN_DESTINATION = f"{GROUP}/spring-bus-destination"
#: The task wakes at least this often (liveness).
TICK = 5.0
#: Bus events waiting for the task; beyond this a burst is dropped (and counted).
BACKLOG = 1000
PUBLISH_TIMEOUT = 10.0
#: ``spec.target.pods`` holds at most this many names (CRD): larger groups take several objects.
MAX_PODS = 100
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """``text`` when it is a valid label value, else a stable digest of it."""
    if _LABEL_VALUE.match(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Inbound:
    """A ConfigRefresh the bridge made for a bus refresh: what its acks must say."""

    event_id: str
    #: ``destinationService`` verbatim (Spring echoes it as ``ackDestinationService``).
    destination: str | None
    #: pod name -> the pod's bus id ``<app>:<pod>``.
    bus_ids: Mapping[str, str]


def refresh_groups(event: wire.BusEvent, items: list[Mapping[str, Any]]) -> list[list[Pod]]:
    """The pods a bus refresh reaches in one namespace, grouped by the sources they manage
    (one ConfigRefresh per group: its sources must be managed by every target), at most
    :data:`MAX_PODS` to a group."""
    groups: dict[tuple[frozenset[str], frozenset[str]], list[Pod]] = {}
    for item in items:
        annotations = (item.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ANN_SPRING_BUS) != "true":
            continue
        pod = pod_from_json(item)
        if pod.skip_reason() is not None or not wire.for_self(event.destination, pod.instance):
            continue
        if not pod.configmaps and not pod.secrets:
            log.warning("Spring bus refresh %s: pod %s manages no ConfigMap or Secret; skipped",
                        event.id, pod.name)
            continue
        groups.setdefault((pod.configmaps, pod.secrets), []).append(pod)
    ordered = sorted(groups.items(), key=lambda group: (sorted(group[0][0]), sorted(group[0][1])))
    chunks = []
    for _sources, pods in ordered:
        pods.sort(key=lambda p: p.name)
        chunks += [pods[i : i + MAX_PODS] for i in range(0, len(pods), MAX_PODS)]
    return chunks


def configrefresh_for(event: wire.BusEvent, name: str, pods: list[Pod]) -> dict[str, Any]:
    first = pods[0]
    sources: list[dict[str, Any]] = [{"configMap": {"name": n}} for n in sorted(first.configmaps)]
    sources += [{"secret": {"name": n}} for n in sorted(first.secrets)]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "labels": {
                LABEL_EVENT: label_value(event.id),
                LABEL_ORIGIN: label_value(event.origin.split(":", 1)[0] or "unnamed"),
            },
            "annotations": {
                ANN_EVENT_ID: event.id,
                ANN_ORIGIN: event.origin,
                ANN_DESTINATION: "" if event.destination is None else event.destination,
            },
        },
        "spec": {"target": {"pods": [p.name for p in pods]}, "sources": sources[:16]},
    }


class SpringBusBridge:
    def __init__(self, config: Config, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.namespaces = config.spring_bus_namespaces
        #: Our ``originService``: a literal that matches no Spring app's id (Spring receivers
        #: use the origin as a pattern: one that matched them would make them skip the refresh).
        self.origin = f"refreshbus-operator:{config.instance}:{uuid.uuid4().hex}"
        self.queue_name = QUEUE_PREFIX + uuid.uuid4().hex
        self._link = Link(config.broker_urls, "springbus", "Spring bus bridge", log, publisher_confirms=True)
        self._exchange: AbstractExchange | None = None
        self._backlog: asyncio.Queue[wire.BusEvent] = asyncio.Queue(BACKLOG)
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.heartbeat = Heartbeat(4 * TICK + 2 * config.api_retry_timeout + 15)
        self.inbound: dict[tuple[str, str], Inbound] = {}
        self.outbound: dict[str, SpringAnswers] = {}
        self._collected_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def connected(self) -> bool:
        return self._link.is_open

    def alive(self) -> bool:
        return self._task is None or (not self._task.done() and not self.heartbeat.stale)

    async def start(self) -> None:
        if self._task is None:
            self.heartbeat.beat()
            self._task = asyncio.create_task(self._run(), name="refreshbus-spring-bus-bridge")
            log.info("Spring bus bridge serving namespaces %s as %s", ", ".join(self.namespaces), self.origin)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task, *self._background])
        await self._link.close()
        self._exchange = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the task --------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            self.heartbeat.beat()
            if not self._link.is_open:
                try:
                    await self._link.open(self._prepare)
                    attempt = 0
                except Exception as exc:
                    delay = backoff(attempt, self.config.publish_retry_initial, self.config.publish_retry_max)
                    attempt += 1
                    log.warning("Spring bus bridge: broker trouble (%s); reconnecting in %.1fs",
                                describe(exc), delay)
                    await asyncio.sleep(delay)
                    continue
            if time.monotonic() - self._collected_at >= self.config.gc_interval:
                self._collected_at = time.monotonic()
                try:
                    await self.collect()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("Spring bus bridge GC failed: %s", exc)
            try:
                event = await asyncio.wait_for(self._backlog.get(), timeout=TICK)
            except TimeoutError:
                continue
            try:
                await self._refresh(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API refused or is away: this event is lost, not the bridge
                MESSAGES.labels(outcome="failed").inc()
                log.warning("Spring bus refresh %s from %s not applied: %s", event.id, event.origin, exc)

    async def _prepare(self, channel: AbstractChannel) -> None:
        # Exactly Spring's declaration (topic, durable, not auto-delete, no arguments): any
        # other flag and whichever side comes second is refused with 406.
        exchange = await channel.declare_exchange(wire.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue_name, durable=False, exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_message, no_ack=True)
        self._exchange = exchange

    # -- inbound ---------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        outcome = self.classify(message.body)
        if outcome is not None:
            MESSAGES.labels(outcome=outcome).inc()

    def classify(self, body: bytes) -> str | None:
        """What to do with one bus message; refreshes are queued for the task (None)."""
        try:
            event = wire.decode(body)
        except wire.SpringBusError as exc:
            log.info("Spring bus: ignored a message (%s): %s", exc.reason, exc)
            return exc.reason
        if event.origin == self.origin:
            return "own"
        if event.type is wire.BusEventType.ACK:
            answers = self.outbound.get(event.ack_id or "")
            if answers is None:
                return "foreign_ack"
            answers.add(event.origin)
            return "ack"
        if event.type is not wire.BusEventType.REFRESH:
            log.info("Spring bus: %s %s from %s is not mapped to refreshbus; ignored",
                     event.type.value, event.id, event.origin)
            return "environment_change" if event.type is wire.BusEventType.ENVIRONMENT_CHANGE else "shutdown"
        try:
            self._backlog.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("Spring bus refresh %s from %s dropped: %d events waiting",
                        event.id, event.origin, BACKLOG)
            return "overflow"
        return None

    async def _refresh(self, event: wire.BusEvent) -> None:
        made = 0
        for namespace in self.namespaces:
            items = (await self.kube.aget(pods_path(namespace))).get("items") or []
            for number, pods in enumerate(refresh_groups(event, items)):
                name = f"springbus-{hashlib.sha256(event.id.encode()).hexdigest()[:12]}-{number}"
                key = (namespace, name)
                self.inbound[key] = Inbound(event.id, event.destination, {p.name: p.instance for p in pods})
                try:
                    await self.kube.apost(cfr_path(namespace), configrefresh_for(event, name, pods))
                except ApiError as exc:
                    if exc.conflict:  # the same bus event again (Spring re-sends): made already
                        continue
                    self.inbound.pop(key, None)
                    raise
                made += 1
                log.info("Spring bus refresh %s from %s (destination %r): ConfigRefresh %s/%s for %d pod(s)",
                         event.id, event.origin, event.destination, namespace, name, len(pods))
        if not made:
            log.info("Spring bus refresh %s from %s (destination %r): no opted-in pod matches",
                     event.id, event.origin, event.destination)
        MESSAGES.labels(outcome="refresh" if made else "no_target").inc()

    async def collect(self) -> int:
        """Delete the finished ConfigRefreshes the bridge made, as auto-refresh deletes its own:
        ``ttl_seconds_after_finished`` after completion, beyond ``history_limit`` per namespace."""
        items: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            items += (await self.kube.aget(cfr_path(namespace), labelSelector=LABEL_EVENT)).get("items") or []
        victims = gc_victims(
            items, time.time(), self.config.ttl_seconds_after_finished, self.config.history_limit
        )
        for namespace, name in victims:
            try:
                await self.kube.adelete(cfr_path(namespace, name))
            except ApiError as exc:
                if not exc.not_found:
                    raise
        if victims:
            log.info("Spring bus bridge GC: deleted %d finished ConfigRefresh(es)", len(victims))
        return len(victims)

    # -- called by the engine's rounds -----------------------------------------------------

    def pod_answered(self, ref: ObjectRef, pod: str, success: bool) -> None:
        """A pod's result was folded: a successful refresh of a bus-made ConfigRefresh is
        acked back on the bus (Spring acks only refreshes that worked)."""
        inbound = self.inbound.get((ref.namespace, ref.name))
        if inbound is None or not success or pod not in inbound.bus_ids:
            return
        body = wire.encode_ack(inbound.event_id, inbound.bus_ids[pod], inbound.destination, new_id())
        self._spawn(self._send_ack(body, pod), f"spring ack {pod}")

    def round_ended(self, ref: ObjectRef) -> None:
        self.inbound.pop((ref.namespace, ref.name), None)

    async def _send_ack(self, body: bytes, pod: str) -> None:
        try:
            await self._publish(body)
            ACKS_SENT.labels(result="sent").inc()
        except Exception as exc:
            ACKS_SENT.labels(result="failed").inc()
            log.warning("Spring bus: the ack for pod %s was not sent: %s", pod, describe(exc))

    async def _publish(self, body: bytes) -> None:
        if not self._link.is_open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._link.up.wait(), PUBLISH_TIMEOUT)
        exchange = self._exchange if self._link.is_open else None
        if exchange is None:
            raise ConnectionError(f"not connected to the broker ({self._link.last_error})")
        message = aio_pika.Message(
            body,
            content_type=wire.CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=new_id(),
            timestamp=now(),
        )
        await exchange.publish(message, routing_key=wire.ROUTING_KEY, timeout=PUBLISH_TIMEOUT)

    async def publish_refresh(self, event_id: str, answers: SpringAnswers) -> None:
        """Publish a ConfigRefresh's bus event; its acks are added to ``answers`` until
        :meth:`forget`. Failures are recorded in ``answers.problem``, never raised."""
        self.outbound[event_id] = answers
        try:
            await self._publish(wire.encode_refresh(event_id, self.origin, answers.destination))
        except Exception as exc:
            answers.problem = describe(exc)
            log.warning("Spring bus: refresh %s not published: %s", event_id, answers.problem)
            return
        answers.published_at = now()
        answers.changed.set()

    def forget(self, event_id: str) -> None:
        self.outbound.pop(event_id, None)
