"""The Spring bus bridge's decisions, without a broker: what a bus message becomes, which pods
a bus refresh reaches, the ConfigRefresh it makes, the Spring answers in status, the settings."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from refreshbus_operator import settings
from refreshbus_operator import status as st
from refreshbus_operator.springbus import bridge as br
from refreshbus_operator.springbus.answers import SpringAnswers
from refreshbus_operator.tasks import cancel_and_wait
from refreshbus_wire import now
from refreshbus_wire import springbus as wire

_spec = importlib.util.spec_from_file_location("targets_cases", Path(__file__).with_name("test_targets.py"))
assert _spec is not None
assert _spec.loader is not None
_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cases)
pod = _cases.pod

SPRING = {"refreshbus.io/spring-bus": "true"}


def event(destination: str | None, **extra: Any) -> bytes:
    body = {"type": "RefreshRemoteApplicationEvent", "timestamp": 1, "originService": "billing:8080:ab",
            "destinationService": destination, "id": "e-1", **extra}
    return json.dumps(body).encode()


@pytest.fixture
def bridge() -> br.SpringBusBridge:
    config = settings.Config(broker_urls=("amqp://u:p@127.0.0.1:1/%2F",), spring_bus=True,
                             spring_bus_namespaces=("shop",))
    return br.SpringBusBridge(config, kube=None)  # type: ignore[arg-type]  # no API call here


def test_messages_are_sorted_and_counted_never_raised(bridge):
    async def run() -> list[str | None]:
        answers = SpringAnswers(destination="**")
        bridge.outbound["ours"] = answers
        outcomes = [bridge.classify(body) for body in (
            b"{", event("**", originService=None), event("**", type="Nope"),
            event("**", type="EnvironmentChangeRemoteApplicationEvent", values={"a": "b"}),
            event("**", type="ShutdownRemoteApplicationEvent"),
            event("**", type="AckRemoteApplicationEvent", ackId="someone-else"),
            event("**", type="AckRemoteApplicationEvent", ackId="ours", originService="orders:8080:1"),
            event("**", originService=bridge.origin),
            event("orders:**"),
        )]
        assert answers.instances.keys() == {"orders:8080:1"}
        assert bridge._backlog.qsize() == 1  # only the refresh waits for the task
        return outcomes

    assert asyncio.run(run()) == ["malformed", "no_origin", "unknown_type", "environment_change", "shutdown",
                                  "foreign_ack", "ack", "own", None]


def test_a_full_backlog_drops_and_counts(bridge):
    async def run() -> str | None:
        for _ in range(br.BACKLOG):
            assert bridge.classify(event("**")) is None
        return bridge.classify(event("**"))

    assert asyncio.run(run()) == "overflow"


def test_a_refresh_reaches_opted_in_running_matching_pods_grouped_by_sources():
    items = [
        pod("orders-0", {"app": "orders"}, annotations=SPRING),
        pod("orders-1", {"app": "orders"}, annotations=SPRING, configmaps="app-config,extra"),
        pod("orders-2", {"app": "orders"}),                                # not opted in to the bus
        pod("orders-3", {"app": "orders"}, annotations=SPRING, phase="Pending"),
        pod("orders-4", {"app": "orders"}, annotations=SPRING, sidecar=False),
        pod("payments-0", {"app": "payments"}, annotations=SPRING),
    ]
    groups = br.refresh_groups(wire.decode(event("orders:**")), items)
    assert [[p.name for p in g] for g in groups] == [["orders-0"], ["orders-1"]]
    assert br.refresh_groups(wire.decode(event("orders")), items) == []          # not expanded
    everyone = br.refresh_groups(wire.decode(event(None)), items)
    assert sorted(p.name for g in everyone for p in g) == ["orders-0", "orders-1", "payments-0"]


def test_a_large_group_takes_several_configrefreshes():
    items = [pod(f"web-{i:03d}", {"app": "web"}, annotations=SPRING) for i in range(br.MAX_PODS + 1)]
    assert [len(g) for g in br.refresh_groups(wire.decode(event("web:**")), items)] == [br.MAX_PODS, 1]


def test_the_configrefresh_names_the_event_and_the_pods_sources():
    item = pod("orders-0", {"app": "orders"}, annotations={**SPRING, "refreshbus.io/secrets": "creds"})
    groups = br.refresh_groups(wire.decode(event("orders:**")), [item])
    body = br.configrefresh_for(wire.decode(event("orders:**", id="x" * 80)), "springbus-1-0", groups[0])
    meta = body["metadata"]
    assert meta["labels"][br.LABEL_EVENT].startswith("h-")          # too long for a label: a digest
    assert meta["labels"][br.LABEL_ORIGIN] == "billing"
    assert meta["annotations"] == {br.ANN_EVENT_ID: "x" * 80, br.ANN_ORIGIN: "billing:8080:ab",
                                   br.ANN_DESTINATION: "orders:**"}
    assert body["spec"] == {"target": {"pods": ["orders-0"]},
                            "sources": [{"configMap": {"name": "app-config"}}, {"secret": {"name": "creds"}}]}
    assert br.label_value("47907af8-a683-4ee0-9f2e-5132637a3c69") == "47907af8-a683-4ee0-9f2e-5132637a3c69"


def test_spring_answers_say_what_the_counts_mean():
    async def run() -> None:
        seen = SpringAnswers(destination="orders:**")
        assert "not published" in seen.render()["message"]
        seen.published_at = now()
        assert seen.add("orders:8080:a")
        assert not seen.add("orders:8080:a")
        body = seen.render()
        assert (body["answered"], body["published"], "complete" in body) == (1, True, False)
        assert "the count is what was seen" in body["message"]
        expected = SpringAnswers(destination="**", expected=2)
        expected.add("a:1:x")
        assert not expected.complete
        expected.add("b:1:y")
        assert expected.render()["complete"] is True

    asyncio.run(run())


def test_the_bridge_needs_its_namespaces():
    with pytest.raises(ValueError, match="SPRING_BUS_NAMESPACES"):
        settings.from_env({"REFRESHBUS_OPERATOR_SPRING_BUS": "true"})
    config = settings.from_env({"REFRESHBUS_OPERATOR_SPRING_BUS": "true",
                                "REFRESHBUS_OPERATOR_SPRING_BUS_NAMESPACES": "shop, web"})
    assert config.spring_bus_namespaces == ("shop", "web")
    assert not settings.from_env({}).spring_bus


def test_a_round_still_waiting_for_spring_answers_is_not_final():
    snap = st.Snapshot(generation=1, event_id="e", start_time=now(), targets=frozenset({"p"}))
    snap.results["p"] = st.PodResult(pod="p", outcome=st.Outcome.OK, at=now())
    snap.conditions["Published"] = st.Condition("Published", "True", "Published", "")
    assert st.phase(snap) is st.Phase.SUCCEEDED
    snap.awaiting = "Spring bus answers"
    assert st.phase(snap) is st.Phase.IN_PROGRESS
    assert st.render(snap, now())["completionTime"] is None
    assert st.summary(snap).endswith("waiting for Spring bus answers")


def test_liveness_fails_when_the_bridge_worker_dies_or_is_stuck():
    from types import SimpleNamespace

    from refreshbus_operator import runtime

    async def main() -> None:
        config = settings.Config(broker_urls=("amqp://u:p@127.0.0.1:1/",), spring_bus=True,
                                 spring_bus_namespaces=("shop",), publish_retry_initial=0.01,
                                 publish_retry_max=0.01)
        bridge = br.SpringBusBridge(config, kube=None)  # type: ignore[arg-type]
        memo = {"engine": SimpleNamespace(dead_workers=list, springbus=bridge)}
        await bridge.start()
        await asyncio.sleep(0.05)  # reconnecting to a closed port: alive, making progress
        assert runtime.dead_workers(memo) == []
        bridge.heartbeat.at -= bridge.heartbeat.limit + 1  # as if stuck that long
        assert runtime.dead_workers(memo) == ["Spring bus bridge"]
        bridge.heartbeat.beat()
        # The worker task ends (as if it had died); cancel_and_wait: a lone cancel can be lost
        # inside aio-pika's connect on Python 3.11 (see refreshbus_operator.tasks).
        await cancel_and_wait([bridge._task])
        assert runtime.dead_workers(memo) == ["Spring bus bridge"]
        await bridge.stop()
        assert runtime.dead_workers(memo) == []  # stopped on purpose (paused): not dead

    asyncio.run(main())


def test_a_paused_replica_leaves_the_bus():
    """Only the active replica is a bus member: a standby would make every bus refresh twice."""
    from types import SimpleNamespace

    from refreshbus_operator import runtime

    async def main() -> None:
        config = settings.Config(broker_urls=("amqp://u:p@127.0.0.1:1/",), spring_bus=True,
                                 spring_bus_namespaces=("shop",))
        bridge = br.SpringBusBridge(config, kube=None)  # type: ignore[arg-type]

        async def no_rounds() -> None:
            return None

        engine = SimpleNamespace(paused=False, springbus=bridge, stop_rounds=no_rounds)
        await bridge.start()
        assert bridge.running
        await runtime.paused({"engine": engine})
        assert not bridge.running
        assert engine.paused

    asyncio.run(main())


def test_finished_bus_refreshes_are_garbage_collected_like_auto_refreshes():
    """TTL after completion and a history limit per namespace; running ones are kept."""
    from datetime import timedelta

    def made(name: str, finished_ago: float | None) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": "InProgress"}
        if finished_ago is not None:
            done = now() - timedelta(seconds=finished_ago)
            status = {"phase": "Succeeded", "completionTime": st.fmt_time(done)}
        return {"metadata": {"namespace": "shop", "name": name, "labels": {br.LABEL_EVENT: name}},
                "status": status}

    class Kube:
        def __init__(self) -> None:
            self.deleted: list[str] = []
            self.selectors: list[str] = []

        async def aget(self, path: str, **query: Any) -> dict[str, Any]:
            self.selectors.append(query["labelSelector"])
            return {"items": [made("old", 7200), made("recent", 10), made("running", None),
                              *(made(f"r{i}", 20 + i) for i in range(5))]}

        async def adelete(self, path: str) -> None:
            self.deleted.append(path.rsplit("/", 1)[1])

    kube = Kube()
    config = settings.Config(spring_bus=True, spring_bus_namespaces=("shop",),
                             ttl_seconds_after_finished=3600, history_limit=5)
    bridge = br.SpringBusBridge(config, kube=kube)  # type: ignore[arg-type]
    assert asyncio.run(bridge.collect()) == 2
    assert sorted(kube.deleted) == ["old", "r4"]  # past its TTL; the sixth newest finished one
    assert kube.selectors == [br.LABEL_EVENT]
