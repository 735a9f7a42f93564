"""The broker going away never costs the app its config, and never leaves a pod stale:
the sidecar retries with growing delays and reconciles from the API after every connect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import create_pod
from refreshbus_testenv.broker import USERS, Broker
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.procs import free_port, wait_until
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult
from refreshbus_wire.routing import SIDECAR_QUEUE_PREFIX

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_restored(running_broker: Broker) -> Iterator[Broker]:
    """The session broker, guaranteed to be running again after the test."""
    try:
        yield running_broker
    finally:
        if not running_broker.running:
            running_broker.pid = None
            running_broker.start()


def routes(body: str) -> dict[str, str]:
    return {"routes.conf": f'location = / {{ return 200 "{body}\\n"; }}\n'}


def test_with_the_broker_down_at_start_the_sidecar_writes_the_config_and_connects_later(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, broker_restored: Broker, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={podc.ENV_ACTION: "none"})
    broker_restored.stop()

    sidecar = sidecars.start(pod, wait_ready=False)
    sidecar.wait_ready(consuming=False)

    assert (sidecar.target_dir / "configmap-settings" / "a").read_text() == "1"
    assert sidecar.probe("/livez")[0] == 200
    assert not sidecar.consuming
    broker_restored.start()
    sidecar.wait_consuming(timeout=30)
    with TestBus(broker_restored.url()) as bus:
        rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})
        event = make_event(namespace, [("ConfigMap", "settings", rv)])
        bus.publish(event)
        assert bus.wait_ack(event.id).result is AckResult.OK
    assert (sidecar.target_dir / "configmap-settings" / "a").read_text() == "2"


def test_a_change_missed_while_the_broker_was_down_is_applied_after_it_returns(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, broker_restored: Broker,
    tmp_path: Path,
) -> None:
    configs.put_configmap(cluster, namespace, "web", routes("v1"))
    shared = tmp_path / "shared"
    nginx = apps.nginx(shared / "configmap-web")
    pod = create_pod(cluster, namespace, "web-0", configmaps=["web"], action={
        podc.ENV_ACTION: "signal", podc.ENV_PROCESS: nginx.process_pattern})
    sidecar = sidecars.start(pod, target_dir=shared)
    master = nginx.pid

    broker_restored.stop()
    configs.put_configmap(cluster, namespace, "web", routes("v2"))  # no event: the broker is down
    assert sidecar.probe("/livez")[0] == 200
    broker_restored.start()

    nginx.wait_for(lambda body: body == "v2\n", timeout=30)  # converged without any event
    assert nginx.pid == master
    assert sidecar.metrics()["refreshbus_sidecar_reconnects_total"] >= 1


def test_an_event_missed_while_the_sidecar_was_away_is_applied_at_reconnect_and_answered_when_resent(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, broker_restored: Broker, bus: TestBus
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={podc.ENV_ACTION: "none"})
    sidecar = sidecars.start(pod)
    sidecar.stop()  # its exclusive queue goes with its connection: nothing is kept for it
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})
    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    restarted = sidecars.start(pod, target_dir=sidecar.target_dir)
    # Level-triggered: the start-up sync applied the change without any event ...
    assert (restarted.target_dir / "configmap-settings" / "a").read_text() == "2"
    # ... and the event, re-sent as the operator does for pods that have not answered, is
    # answered "ok": that sync applied this event's change, after the event was issued.
    bus.publish(event)
    assert bus.wait_ack(event.id).result is AckResult.OK
    assert [a.result for a in bus.acks_for(event.id)] == [AckResult.OK]
    started = time.monotonic()
    assert restarted.stop() == 0
    assert time.monotonic() - started < 2


def test_a_dead_broker_in_the_url_list_is_skipped_and_passwords_never_reach_the_logs(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, running_broker: Broker, bus: TestBus
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={podc.ENV_ACTION: "none"})
    dead = f"amqp://refreshbus-sidecar:dead-node-password@127.0.0.1:{free_port()}/%2F"
    live = running_broker.url("refreshbus-sidecar")

    sidecar = sidecars.start(pod, broker_urls=[dead, live, dead])  # tried in random order
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})
    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    assert bus.wait_ack(event.id).result is AckResult.OK
    log = sidecar.log.read_text()
    assert "dead-node-password" not in log
    assert USERS["refreshbus-sidecar"] not in log
    refreshes = [r for r in sidecar.log_records() if r.get("event_id") == event.id]
    assert refreshes, "the refresh is logged with its event id"
    assert all(r["level"] in {"info", "warning"} for r in refreshes)


def test_a_deleted_queue_is_declared_again_and_the_sidecar_catches_up_and_hears_later_events(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, running_broker: Broker, bus: TestBus,
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "api-0", configmaps=["settings"], action={podc.ENV_ACTION: "none"})
    sidecar = sidecars.start(pod)
    prefix = f"{SIDECAR_QUEUE_PREFIX}{namespace}.api-0."

    def queues() -> list[str]:
        return [q for q in running_broker.list_queues() if q.startswith(prefix)]

    (queue,) = queues()

    configs.put_configmap(cluster, namespace, "settings", {"a": "2"})  # its event went with the queue
    # An administrator deletes it (no other sidecar can: it is exclusive); the broker cancels
    # the sidecar's consumer.
    running_broker.ctl("delete_queue", queue)
    wait_until(lambda: (sidecar.target_dir / "configmap-settings" / "a").read_text() == "2", 30,
               "the catch-up after the queue came back", sidecar.proc, sidecar.log)
    (again,) = queues()
    assert again != queue  # a new exclusive queue, under a new name
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "3"})
    event = make_event(namespace, [("ConfigMap", "settings", rv)])
    bus.publish(event)

    assert bus.wait_ack(event.id).result is AckResult.OK
    assert (sidecar.target_dir / "configmap-settings" / "a").read_text() == "3"
    assert sidecar.metrics()["refreshbus_sidecar_reconnects_total"] == 0  # same connection
