"""refreshbus and real Spring Boot apps on one Spring Cloud Bus (issue 12), in both directions.

Two real Spring Boot 3.5 / Spring Cloud 2025.0 instances (tests/support/spring-app) share the test
broker with refreshbus pods whose sidecars and apps are real processes, and with the real operator
running its Spring bus bridge. One of the two instances is also a Config Server with
spring-cloud-config-monitor on a git repository on disk. The JVMs are started once for the module.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pika
import pytest
from opharness import OperatorProc, refresh, wait_for, wait_phase
from refreshbus_support import configs
from refreshbus_support.fleet import Fleet, Member
from refreshbus_support.pods import Owner
from refreshbus_support.spring import SpringApp

pytestmark = pytest.mark.e2e

SPRING_BUS = {"refreshbus.io/spring-bus": "true"}
EVENT_LABEL = "refreshbus.io/spring-bus-event"


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Config Server's backend: a git repository on disk with the apps' config files."""
    repo = tmp_path_factory.mktemp("config-repo")
    (repo / "orders.yml").write_text("demo:\n  message: orders from git v1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], check=True)
    return repo


@pytest.fixture(scope="module")
def spring(broker: Any, git_repo: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SpringApp]]:
    """[config server + bus member "configserver", bus member "inventory"], healthy."""
    workdir = tmp_path_factory.mktemp("spring")
    apps = [
        SpringApp("configserver", workdir, broker.port, {
            "demo.config-server": "true",
            "spring.cloud.config.server.git.uri": git_repo.as_uri(),
            "spring.cloud.config.server.git.default-label": "main",
        }),
        SpringApp("inventory", workdir, broker.port),
    ]
    try:
        for app in apps:
            app.start()
        with ThreadPoolExecutor(len(apps)) as pool:
            list(pool.map(lambda a: a.wait_ready(), apps))
        yield apps
    finally:
        with ThreadPoolExecutor(len(apps)) as pool:  # a JVM takes seconds to stop: side by side
            list(pool.map(lambda a: a.stop(), apps))


@pytest.fixture
def bridged(start_operator: Any, namespace: str) -> OperatorProc:
    """The operator with its Spring bus bridge serving the test's namespace."""
    op: OperatorProc = start_operator(env={"REFRESHBUS_OPERATOR_SPRING_BUS": "true",
                                           "REFRESHBUS_OPERATOR_SPRING_BUS_NAMESPACES": namespace,
                                           # A loaded machine's JVM can take seconds for a refresh.
                                           "REFRESHBUS_OPERATOR_SPRING_BUS_ANSWER_WINDOW": "10"})
    wait_for(lambda: "Spring bus bridge connected to the broker" in op.text(), 30, "the bridge to connect")
    return op


def config(color: str) -> dict[str, str]:
    return {"config.json": json.dumps({"color": color})}


def pods(fleet: Fleet) -> dict[str, Member]:
    """orders-0/1 and payments-0 opted in to the bus; orders-2 is an orders pod that is not."""
    made = {}
    for name, app, bus in (("orders-0", "orders", True), ("orders-1", "orders", True),
                           ("orders-2", "orders", False), ("payments-0", "payments", True)):
        made[name] = fleet.node_pod(name, labels={"app": app}, owner=Owner.replicaset_of(f"{app}-5d8f9c7b6"),
                                    annotations=SPRING_BUS if bus else None)
    return made


def bus_refreshes(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    listing = cluster.get_json("-n", namespace, "configrefreshes", "-l", EVENT_LABEL)
    return list(listing.get("items") or [])


def refreshed_for(cluster: Any, namespace: str, event_id: str, op: OperatorProc) -> dict[str, Any]:
    """The (one) ConfigRefresh made for bus event ``event_id``, once it has ended."""
    found = wait_for(lambda: [o for o in bus_refreshes(cluster, namespace)
                              if o["metadata"]["labels"][EVENT_LABEL] == event_id], 30,
                     f"a ConfigRefresh for bus event {event_id}")
    assert len(found) == 1, found
    return wait_phase(cluster, namespace, found[0]["metadata"]["name"], "Succeeded", operator=op)


def publish_raw(broker: Any, body: bytes, content_type: str | None = "application/json") -> None:
    """A message on springCloudBus as any (foreign) bus member could send it."""
    conn = pika.BlockingConnection(pika.URLParameters(broker.url()))
    try:
        channel = conn.channel()
        channel.basic_publish("springCloudBus", "springCloudBus", body,
                              pika.BasicProperties(content_type=content_type))
    finally:
        conn.close()


def bus_event(destination: str | None, **extra: Any) -> tuple[str, bytes]:
    event_id = str(uuid.uuid4())
    body = {"type": "RefreshRemoteApplicationEvent", "timestamp": 1, "originService": "tester:0:abc",
            "destinationService": destination, "id": event_id, **extra}
    return event_id, json.dumps(body).encode()


def loads(member: Member) -> int:
    return int(member.node_state()["loads"])


def test_busrefresh_from_spring_refreshes_the_matching_pods_and_spring_sees_their_acks(
        cluster, namespace, fleet, spring, bridged):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    members = pods(fleet)
    configs.put_configmap(cluster, namespace, "app-config", config("blue"))
    caller, other = spring
    before = {app.name: app.state()["refreshes"] for app in spring}

    caller.busrefresh("orders")  # Spring's sender expands it to orders:**

    objs = wait_for(lambda: bus_refreshes(cluster, namespace), 30, "the bus refresh's ConfigRefresh")
    event_id = objs[0]["metadata"]["annotations"]["refreshbus.io/spring-bus-event-id"]
    obj = refreshed_for(cluster, namespace, event_id, bridged)
    assert obj["metadata"]["annotations"]["refreshbus.io/spring-bus-origin"] == caller.state()["busId"]
    assert obj["metadata"]["annotations"]["refreshbus.io/spring-bus-destination"] == "orders:**"
    assert sorted(r["pod"] for r in obj["status"]["results"]) == ["orders-0", "orders-1"]
    for name in ("orders-0", "orders-1"):
        assert members[name].node_state()["config"] == {"color": "blue"}
    for name in ("orders-2", "payments-0"):  # not opted in to the bus / another app
        assert members[name].node_state()["config"] == {"color": "red"}

    # Spring's side: one AckRemoteApplicationEvent per refreshed pod, with the pod's bus id.
    def acked() -> list[dict[str, str]]:
        return [a for a in caller.state()["acks"] if a["ackId"] == event_id]

    seen = wait_for(lambda: len(acked()) >= 2 and acked(), 15, "Spring to see both pods' acks")
    assert sorted(a["originService"] for a in seen) == ["orders:orders-0", "orders:orders-1"]
    assert {a["ackDestinationService"] for a in seen} == {"orders:**"}
    assert {a["event"] for a in seen} == {"org.springframework.cloud.bus.event.RefreshRemoteApplicationEvent"}
    # orders:** is for no Spring instance here: neither refreshed.
    assert {app.name: app.state()["refreshes"] for app in spring} == before
    assert other.state()["acks"] is not None


def test_a_configrefresh_reaches_the_spring_instances_and_shows_their_acks(
        cluster, namespace, fleet, spring, bridged):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    members = pods(fleet)
    before = {app.name: app.state()["refreshes"] for app in spring}
    configs.put_configmap(cluster, namespace, "app-config", config("green"))

    refresh(cluster, namespace, "everyone", {
        "sources": [{"configMap": {"name": "app-config"}}],
        "target": {"pods": ["orders-2"]},
        "springBus": {"destination": "**", "expectedInstances": 2},
    })
    obj = wait_phase(cluster, namespace, "everyone", "Succeeded", operator=bridged)

    section = obj["status"]["springBus"]
    assert section["published"] is True
    assert section["destinationService"] == "**"
    assert section["complete"] is True
    assert section["answered"] == 2
    assert sorted(i["busId"] for i in section["instances"]) == sorted(app.state()["busId"] for app in spring)
    for app in spring:  # both reloaded their @RefreshScope bean
        wait_for(lambda a=app: a.state()["refreshes"] > before[a.name], 10, f"{app.name} to refresh")
    assert obj["status"]["counts"]["succeeded"] == 1  # the pod, counted apart from Spring
    assert members["orders-2"].node_state()["config"] == {"color": "green"}
    # The bridge's own event came back to it and was not turned into a ConfigRefresh.
    assert bus_refreshes(cluster, namespace) == []

    # A Spring-only refresh: a destination no refreshbus pod has is not an error with springBus.
    refresh(cluster, namespace, "inventory-only", {
        "sources": [{"configMap": {"name": "app-config"}}],
        "target": {"destination": "inventory"},
        "springBus": {},
    })
    obj = wait_phase(cluster, namespace, "inventory-only", "Succeeded", operator=bridged)
    inventory = spring[1].state()["busId"]
    assert obj["status"]["springBus"]["destinationService"] == "inventory:**"
    assert [i["busId"] for i in obj["status"]["springBus"]["instances"]] == [inventory], \
        (obj["status"], spring[1].tail())
    assert "expectedInstances" not in obj["status"]["springBus"]


def test_destinations_follow_springs_receiver_rules_and_bad_messages_change_nothing(
        cluster, namespace, fleet, spring, broker, bridged):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    members = pods(fleet)
    before = loads(members["payments-0"])

    # Not for any pod: a bare app name (receivers do not expand), another app, a profile segment
    # (refreshbus ids have none), a case difference.
    for destination in ("orders", "billing:**", "orders:dev:**", "Orders:**"):
        publish_raw(broker, bus_event(destination)[1])
    # Never acted on: not JSON, unknown/missing type, no origin, other event types, a foreign ack,
    # a float timestamp, a non-JSON content type with a JSON body is still read.
    for body in (b"not json", b"[]", b'{"type":"NoSuchEvent","originService":"x:1","id":"1"}',
                 json.dumps({"type": "RefreshRemoteApplicationEvent", "destinationService": "**",
                             "id": "no-origin"}).encode(),
                 # (for no Spring instance: a shutdown for "**" would stop the test's Spring apps)
                 bus_event("orders:**", type="EnvironmentChangeRemoteApplicationEvent", values={"a": "b"})[1],
                 bus_event("orders:**", type="ShutdownRemoteApplicationEvent")[1],
                 bus_event("**", type="AckRemoteApplicationEvent", ackId="nobody")[1],
                 bus_event("**", timestamp="yesterday")[1],
                 b"\xff" * 100_000):
        publish_raw(broker, body)

    # One pod by its full instance id: the bridge handles events in order, so once this one is
    # done every message above has been handled too.
    event_id, body = bus_event("orders:orders-1")
    publish_raw(broker, body)
    obj = refreshed_for(cluster, namespace, event_id, bridged)
    assert [r["pod"] for r in obj["status"]["results"]] == ["orders-1"]
    assert len(bus_refreshes(cluster, namespace)) == 1
    assert bridged.alive

    # A pattern within a segment and a broadcast (null destination) reach every opted-in pod.
    event_id, body = bus_event("orders:orders-?")
    publish_raw(broker, body)
    obj = refreshed_for(cluster, namespace, event_id, bridged)
    assert sorted(r["pod"] for r in obj["status"]["results"]) == ["orders-0", "orders-1"]
    configs.put_configmap(cluster, namespace, "app-config", config("blue"))
    event_id, body = bus_event(None)
    publish_raw(broker, body)
    wait_for(lambda: len([o for o in bus_refreshes(cluster, namespace)
                          if o["metadata"]["labels"][EVENT_LABEL] == event_id]) == 1, 30, "the broadcast")
    obj = refreshed_for(cluster, namespace, event_id, bridged)
    assert sorted(r["pod"] for r in obj["status"]["results"]) == ["orders-0", "orders-1", "payments-0"]
    assert loads(members["payments-0"]) > before
    assert members["payments-0"].node_state()["config"] == {"color": "blue"}
    assert members["orders-2"].node_state()["config"] == {"color": "red"}  # never opted in to the bus

    metrics = bridged_metrics(bridged)
    for outcome in ("no_target", "malformed", "unknown_type", "no_origin", "environment_change", "shutdown",
                    "foreign_ack"):
        assert metrics.get(outcome, 0) >= 1, (outcome, metrics)
    # The Spring instances ignored all of it as well (none of it was for them).
    assert all(app.proc is not None and app.proc.poll() is None for app in spring)


def bridged_metrics(op: OperatorProc) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("refreshbus_operator_spring_bus_messages_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_git_push_webhook_to_the_config_monitor_refreshes_the_orders_pods(
        cluster, namespace, fleet, spring, git_repo, bridged):
    configs.put_configmap(cluster, namespace, "app-config", config("red"))
    members = pods(fleet)
    configserver = spring[0]
    assert configserver.get("/orders/default")["propertySources"][0]["source"]["demo.message"] == \
        "orders from git v1"
    configs.put_configmap(cluster, namespace, "app-config", config("from-git"))
    (git_repo / "orders.yml").write_text("demo:\n  message: orders from git v2\n")
    subprocess.run(["git", "-C", str(git_repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "-am", "v2"], check=True)

    # What GitHub posts on a push (the monitor reads the changed paths).
    payload = {"ref": "refs/heads/main", "commits": [{"id": "c2", "modified": ["orders.yml"]}]}
    status = configserver.post("/monitor", json.dumps(payload).encode(),
                               {"Content-Type": "application/json", "X-Github-Event": "push"})
    assert status == 200

    objs = wait_for(lambda: bus_refreshes(cluster, namespace), 30, "the monitor's bus refresh")
    event_id = objs[0]["metadata"]["annotations"]["refreshbus.io/spring-bus-event-id"]
    obj = refreshed_for(cluster, namespace, event_id, bridged)
    assert obj["metadata"]["annotations"]["refreshbus.io/spring-bus-destination"] == "orders:**"
    assert obj["metadata"]["annotations"]["refreshbus.io/spring-bus-origin"] == configserver.state()["busId"]
    assert sorted(r["pod"] for r in obj["status"]["results"]) == ["orders-0", "orders-1"]
    for name in ("orders-0", "orders-1"):
        assert members[name].node_state()["config"] == {"color": "from-git"}
    assert configserver.get("/orders/default")["propertySources"][0]["source"]["demo.message"] == \
        "orders from git v2"
