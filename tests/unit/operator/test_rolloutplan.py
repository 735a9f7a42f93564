"""The pure rules of a progressive rollout: step sizes, which pods a step moves, health gates."""

from __future__ import annotations

from typing import Any

import pytest
from refreshbus_operator import rolloutplan as plan


@pytest.mark.parametrize(
    ("steps", "total", "sizes"),
    [
        ([1, "25%", "100%"], 8, [1, 2, 8]),
        ([1, "25%", "100%"], 20, [1, 5, 20]),
        ([1, "25%", "100%"], 3, [1, 2, 3]),
        # Fewer pods than steps: the later steps add nothing (the rollout skips them).
        ([1, "25%", "100%"], 1, [1, 1, 1]),
        ([1, "25%", "100%"], 0, [0, 0, 0]),
        (["100%"], 5, [5]),
        # A count beyond the pods there are is all of them.
        ([10, "100%"], 4, [4, 4]),
        # A percentage rounds up: 10% of 11 is 2 pods.
        (["10%", "50%", "100%"], 11, [2, 6, 11]),
        ([1, 3, "50%", "100%"], 100, [1, 3, 50, 100]),
    ],
)
def test_plan_gives_cumulative_sizes_that_grow_until_every_pod(
    steps: list[Any], total: int, sizes: list[int]
) -> None:
    assert plan.plan(steps, total) == sizes


def test_step_pods_are_the_first_unmoved_pods_by_name() -> None:
    pods = [f"web-{c}" for c in "edcba"]
    steps: list[plan.Step] = [1, "50%", "100%"]

    first = plan.step_pods(steps, 0, pods, moved=[])
    second = plan.step_pods(steps, 1, pods, moved=first)
    third = plan.step_pods(steps, 2, pods, moved=first + second)

    assert first == ["web-a"]
    assert second == ["web-b", "web-c"]  # 50% of 5 rounds up to 3 pods in all
    assert third == ["web-d", "web-e"]


def test_step_pods_count_moved_pods_that_left_and_new_pods_that_came() -> None:
    # web-a was moved, then deleted; web-f appeared (a new pod, on the accepted revision).
    pods = ["web-b", "web-c", "web-d", "web-f"]

    assert plan.step_pods([1, "50%", "100%"], 1, pods, moved=["web-a"]) == ["web-b", "web-c", "web-d"]
    assert plan.step_pods([1, "50%", "100%"], 2, pods, moved=["web-a", "web-b"]) == [
        "web-c",
        "web-d",
        "web-f",
    ]


def test_step_pods_take_ready_pods_first() -> None:
    pods = ["web-a", "web-b", "web-c"]

    assert plan.step_pods([1, "100%"], 0, pods, moved=[], ready=["web-b", "web-c"]) == ["web-b"]
    assert plan.step_pods([1, "100%"], 1, pods, moved=["web-b"], ready=["web-c"]) == ["web-c", "web-a"]


def test_step_pods_is_empty_once_every_pod_moved() -> None:
    assert plan.step_pods([1, "25%", "100%"], 1, ["web-a"], moved=["web-a"]) == []


def pod(
    name: str = "web-a",
    *,
    uid: str = "u1",
    ready: bool = True,
    restarts: tuple[int, ...] = (0, 0),
    deleting: bool = False,
    protocol: str | None = "1.3",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid, "annotations": {}}
    if protocol is not None:
        meta["annotations"][plan.SIDECAR_PROTOCOL_ANNOTATION] = protocol
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "initContainerStatuses": [{"name": "refreshbus-sidecar", "restartCount": restarts[0]}],
            "containerStatuses": [{"name": "app", "restartCount": restarts[1]}],
        },
    }


def test_pod_state_reads_ready_restarts_of_every_container_and_protocol() -> None:
    state = plan.pod_state(pod(ready=False, restarts=(1, 2), protocol="1.3"))

    assert state == plan.PodState(uid="u1", ready=False, restarts=3, terminating=False, protocol="1.3")
    assert plan.pod_state(pod(deleting=True)).terminating


def test_a_healthy_pod_passes_the_gate() -> None:
    before = {"web-a": plan.pod_state(pod())}

    assert plan.health_failures(before, {"web-a": plan.pod_state(pod())}) == ({}, set())


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (pod(ready=False), "not Ready"),
        (pod(restarts=(0, 1)), "restarted 1 time(s)"),
        (pod(restarts=(1, 0)), "restarted 1 time(s)"),  # a sidecar crash counts too
        (pod(ready=False, restarts=(0, 2)), "restarted 2 time(s)"),
    ],
)
def test_a_pod_not_ready_or_restarted_fails_the_gate(now: dict[str, Any], reason: str) -> None:
    failing, gone = plan.health_failures({"web-a": plan.pod_state(pod())}, {"web-a": plan.pod_state(now)})

    assert list(failing) == ["web-a"]
    assert reason in failing["web-a"]
    assert gone == set()


def test_a_pod_not_ready_when_moved_is_not_failed_for_not_being_ready() -> None:
    before = {"web-a": plan.pod_state(pod(ready=False))}

    assert plan.health_failures(before, {"web-a": plan.pod_state(pod(ready=False))}) == ({}, set())
    failing, _ = plan.health_failures(before, {"web-a": plan.pod_state(pod(ready=False, restarts=(0, 1)))})
    assert "restarted" in failing["web-a"]


def test_a_baseline_survives_the_annotation() -> None:
    state = plan.pod_state(pod(ready=False, restarts=(1, 2)))

    assert plan.PodState.from_json(state.to_json()) == plan.PodState(uid="u1", ready=False, restarts=3)
    assert plan.PodState.from_json(["u1", 3]) == plan.PodState(uid="u1", ready=True, restarts=3)


@pytest.mark.parametrize(
    "now",
    [None, pod(deleting=True), pod(uid="u2", ready=False)],
    ids=["deleted", "terminating", "replaced"],
)
def test_a_pod_that_went_is_dropped_not_failed(now: dict[str, Any] | None) -> None:
    current = {} if now is None else {"web-a": plan.pod_state(now)}

    assert plan.health_failures({"web-a": plan.pod_state(pod())}, current) == ({}, {"web-a"})


def test_child_failures_are_its_failed_and_silent_pods() -> None:
    status = {
        "phase": "PartiallyFailed",
        "results": [
            {"pod": "web-a", "result": "failed", "reason": "health check returned 503"},
            {"pod": "web-b", "result": "timeout", "reason": "no answer within 60s"},
            {"pod": "web-c", "result": "ok"},
            {"pod": "web-d", "result": "unchanged"},
        ],
    }

    assert plan.child_failures(status) == {
        "web-a": "health check returned 503",
        "web-b": "no answer within 60s",
    }


@pytest.mark.parametrize(
    ("failing", "tolerated", "passes"), [(0, 0, True), (1, 0, False), (2, 2, True), (3, 2, False)]
)
def test_max_failures_is_how_many_failing_pods_are_tolerated(
    failing: int, tolerated: int, passes: bool
) -> None:
    assert plan.within_tolerance([f"p{i}" for i in range(failing)], tolerated) is passes


@pytest.mark.parametrize(
    ("version", "follows"),
    [("1.3", True), ("1.4", True), ("1.12", True), ("1.2", False), ("", False), ("2.0", False), ("x", False)],
)
def test_only_sidecars_of_protocol_1_3_or_later_follow_the_record(version: str, follows: bool) -> None:
    assert plan.protocol_follows_record(version) is follows


def test_too_old_names_the_pods_and_says_what_to_do() -> None:
    states = {"web-a": plan.pod_state(pod(protocol=None)), "web-b": plan.pod_state(pod(protocol="1.3"))}

    old = plan.too_old(states)

    assert list(old) == ["web-a"]
    assert "restart the workload to get the current sidecar" in old["web-a"]


def test_spec_key_ignores_only_paused() -> None:
    spec = {"sources": [{"configMap": {"name": "web"}}], "rollout": {"steps": [1, "100%"], "paused": False}}
    paused = {**spec, "rollout": {"steps": [1, "100%"], "paused": True}}
    other = {**spec, "rollout": {"steps": [2, "100%"], "paused": False}}

    assert plan.spec_key(spec) == plan.spec_key(paused)
    assert plan.spec_key(spec) != plan.spec_key(other)
    assert spec["rollout"]["paused"] is False  # the caller's spec is not changed
