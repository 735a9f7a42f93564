"""Engine.reconcile and rollouts: a ConfigRefresh with spec.rollout becomes a Rollout, and
toggling only ``rollout.paused`` holds or resumes the running one instead of starting anew
(docs/rollout.md, "Pause and resume"). The rollout's own work is replaced by a task that
waits: what is checked here is the dispatch."""

from __future__ import annotations

import asyncio
import copy
import json
from types import SimpleNamespace
from typing import Any

import pytest
from refreshbus_operator import rollout as rollout_mod
from refreshbus_operator import settings
from refreshbus_operator.engine import Engine
from refreshbus_operator.rolloutplan import spec_key

SPEC: dict[str, Any] = {
    "sources": [{"configMap": {"name": "app-config"}}],
    "target": {"workload": {"kind": "Deployment", "name": "web"}},
    "rollout": {"steps": [1, "100%"], "bakeSeconds": 30, "paused": False},
}


def body(
    generation: int,
    *,
    paused: bool = False,
    steps: list[Any] | None = None,
    status: dict[str, Any] | None = None,
    state_of: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    spec["rollout"]["paused"] = paused
    if steps is not None:
        spec["rollout"]["steps"] = steps
    annotations = {}
    if state_of is not None:
        annotations[settings.STATE_ANNOTATION] = json.dumps({"spec": spec_key(state_of), "baselines": {}})
    return {
        "metadata": {
            "namespace": "ns",
            "name": "roll",
            "uid": "u1",
            "generation": generation,
            "annotations": annotations,
        },
        "spec": spec,
        "status": status or {},
    }


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    async def wait_forever(self: rollout_mod.Rollout, after: asyncio.Task[None] | None = None) -> None:
        if after is not None:
            await after
        self.started = True  # type: ignore[attr-defined]
        await asyncio.Event().wait()

    monkeypatch.setattr(rollout_mod.Rollout, "run", wait_forever)
    kube = SimpleNamespace(apost=None, arequest=None)
    return Engine(settings.Config(broker_urls=("amqp://u:p@127.0.0.1:1/%2F",)), kube)  # type: ignore[arg-type]


def test_pausing_and_resuming_keep_the_same_rollout(engine: Engine) -> None:
    async def scenario() -> None:
        assert engine.reconcile(body(1)) == "started"
        first = engine.rollouts[("ns", "roll")]
        assert first.unpaused.is_set()

        assert engine.reconcile(body(2, paused=True)) == "running"
        assert engine.rollouts[("ns", "roll")] is first
        assert not first.unpaused.is_set()
        assert first.generation == 2

        assert engine.reconcile(body(3, paused=False)) == "running"
        assert first.unpaused.is_set()
        assert first.generation == 3
        await engine.stop_rounds()

    asyncio.run(scenario())


def test_any_other_spec_change_is_a_new_rollout(engine: Engine) -> None:
    async def scenario() -> None:
        assert engine.reconcile(body(1)) == "started"
        first = engine.rollouts[("ns", "roll")]

        await asyncio.sleep(0)
        assert getattr(first, "started", False)

        assert engine.reconcile(body(2, steps=[2, "100%"])) == "started"

        second = engine.rollouts[("ns", "roll")]
        assert second is not first
        assert second.task is not None
        assert first.task is not None
        while not getattr(second, "started", False):
            await asyncio.sleep(0)
        assert first.task.cancelled(), "the new rollout starts once the old one has ended"
        await engine.stop_rounds()

    asyncio.run(scenario())


def test_a_finished_rollout_paused_afterwards_is_left_alone(engine: Engine) -> None:
    # Generation 2 only toggled paused after the rollout finished at generation 1.
    finished = body(2, paused=True, state_of=SPEC, status={"phase": "Succeeded", "observedGeneration": 1})

    assert engine.reconcile(finished) == "done"
    assert engine.rollouts == {}


def test_a_rollout_in_flight_is_resumed_from_its_status(engine: Engine) -> None:
    async def scenario() -> None:
        status = {
            "phase": "InProgress",
            "observedGeneration": 1,
            "rollout": {"state": "Baking", "candidateRevision": 2, "stepStatuses": [{"step": 1}]},
        }
        assert engine.reconcile(body(1, state_of=SPEC, status=status)) == "resumed"
        resumed = engine.rollouts[("ns", "roll")]
        assert resumed.revision == 2
        assert resumed.step_statuses == [{"step": 1}]
        await engine.stop_rounds()

    asyncio.run(scenario())


def test_a_status_of_another_spec_is_not_resumed(engine: Engine) -> None:
    async def scenario() -> None:
        other = {**SPEC, "rollout": {"steps": [3, "100%"]}}
        status = {"phase": "InProgress", "rollout": {"state": "Baking", "candidateRevision": 2}}
        assert engine.reconcile(body(2, state_of=other, status=status)) == "started"
        assert engine.rollouts[("ns", "roll")].step_statuses == []
        await engine.stop_rounds()

    asyncio.run(scenario())
