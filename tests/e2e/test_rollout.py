"""Progressive rollout (docs/rollout.md) end to end, with real components: the real operator
process, a real kube-apiserver and RabbitMQ, a real sidecar process per pod reloading a real
Node.js app (tests/support/apps/config-server.js) that journals every load and serves its
config; its ``/healthz`` answers 503 while its config says ``"healthy": false``, and each
sidecar checks it after a reload (``REFRESHBUS_HEALTH_URL``), as a pod would ask for.

No kubelet runs here: the pods are API objects the test plays kubelet for (the fleet creates
them Running and Ready). So the gates' pod observations (Ready, restartCount, a pod gone)
come from pod status this test patches, or from pods it deletes and creates; what the apps
load and serve is real. The real-node version (a readiness probe failing for real) is
tests/e2e/node/test_rollout_node.py.

Bake times are checked from the timestamps the operator writes into status, never by timing
the test.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from opharness import OperatorProc, cfr, events_for, wait_for, wait_phase
from refreshbus_support import configs
from refreshbus_support.fleet import Fleet, Member, apply_deployment
from refreshbus_support.pods import Owner
from refreshbus_wire import pods as podc
from refreshbus_wire import release as wire

pytestmark = pytest.mark.e2e

RECORD = wire.record_name("Deployment", "web")
SOURCES = [{"configMap": {"name": "app-config"}}]
TARGET = {"workload": {"kind": "Deployment", "name": "web"}}


def config(version: int, *, healthy: bool = True) -> dict[str, str]:
    body: dict[str, Any] = {"version": version, "greeting": f"hello v{version}"}
    if not healthy:
        body["healthy"] = False  # the app's /healthz then answers 503
    return {"config.json": json.dumps(body)}


def versioned_deployment(
    cluster: Any, namespace: str, *, auto_refresh: bool = False, steps: str = "1,25%,100%", bake: str = "1s"
) -> dict[str, str]:
    """Deployment ``web``, versioned (refreshbus.io/rollout), and wait for its release record."""
    labels = apply_deployment(
        cluster,
        namespace,
        "web",
        replicas=0,
        auto_refresh=auto_refresh,
        annotations={podc.ANN_ROLLOUT: steps, podc.ANN_ROLLOUT_BAKE: bake},
    )
    wait_for(lambda: record(cluster, namespace), 30, f"the release record {RECORD}")
    return labels


def record(cluster: Any, namespace: str) -> wire.Release | None:
    out = cluster.kubectl("-n", namespace, "get", "configmap", RECORD, "-o", "json", check=False)
    return wire.decode_record(json.loads(out.stdout)).release if out.returncode == 0 else None


def start_pods(fleet: Fleet, labels: dict[str, str], names: list[str]) -> list[Member]:
    """Pods of ``web`` with a 1.3 sidecar that reloads the app over HTTP and then checks its
    health. (HTTP, not SIGHUP: the app answers the reload call once it re-read its config, so
    the health check sees the new config; after a signal it may ask before the app handled it.)"""
    members = []
    for name in names:
        member = fleet.node_pod(
            name,
            labels=labels,
            owner=Owner.replicaset_of("web"),
            journal=True,
            start=False,
            http_reload=True,
            annotations={podc.ANN_SIDECAR_PROTOCOL: "1.3"},
        )
        member.sidecar_env.update(
            {podc.ENV_HEALTH_URL: f"http://127.0.0.1:{member.app_port}/healthz", podc.ENV_HEALTH_TIMEOUT: "1"}
        )
        fleet.start(member)
        members.append(member)
    return members


def pod_names(n: int, prefix: str = "web-5d8f9c7b6-") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def rollout_refresh(cluster: Any, namespace: str, name: str, **rollout: Any) -> None:
    manifest = {
        "apiVersion": "refreshbus.io/v1alpha1",
        "kind": "ConfigRefresh",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"sources": SOURCES, "target": TARGET, "deadlineSeconds": 20, "rollout": rollout},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def served(member: Member) -> int:
    return int(member.node_state()["config"]["version"])


def versions_loaded(member: Member) -> list[int]:
    return [e["version"] for e in member.loads()]


def on_disk(member: Member) -> int:
    assert member.config_file is not None
    return int(json.loads(member.config_file.read_text())["version"])


def wait_rollout(
    cluster: Any,
    namespace: str,
    name: str,
    ok: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60.0,
    operator: OperatorProc | None = None,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = cfr(cluster, namespace, name)
        rollout = obj.get("status", {}).get("rollout") or {}
        return obj if rollout and ok(rollout) else None

    try:
        return wait_for(check, timeout, what, interval=0.2)
    except AssertionError as exc:
        status = json.dumps(cfr(cluster, namespace, name).get("status"), indent=1)
        log = operator.logs_tail() if operator is not None else ""
        raise AssertionError(f"{exc}\nstatus: {status}\n{log}") from None


def set_paused(cluster: Any, namespace: str, name: str, paused: bool) -> None:
    """What docs/rollout.md tells users to run."""
    patch = json.dumps({"spec": {"rollout": {"paused": paused}}})
    cluster.kubectl("-n", namespace, "patch", "cfr", name, "--type", "merge", "-p", patch)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def reasons(cluster: Any, namespace: str, name: str) -> list[str]:
    return [
        e["reason"] for e in sorted(events_for(cluster, namespace, name), key=lambda e: e["firstTimestamp"])
    ]


# -- refusals ------------------------------------------------------------------------------


def test_a_rollout_on_a_workload_without_a_release_record_is_refused(cluster, namespace, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    apply_deployment(cluster, namespace, "web", replicas=0, auto_refresh=False)
    op = start_operator()

    rollout_refresh(cluster, namespace, "roll", steps=[1, "100%"])

    obj = wait_phase(cluster, namespace, "roll", "Failed", operator=op)
    assert obj["status"]["rollout"]["state"] == "Failed"
    complete = next(c for c in obj["status"]["conditions"] if c["type"] == "Complete")
    assert complete["reason"] == "NotVersioned"
    assert "refreshbus.io/rollout" in complete["message"]
    wait_for(
        lambda: "NotVersioned" in reasons(cluster, namespace, "roll"), 10, "a NotVersioned Warning Event"
    )


def test_a_rollout_over_pods_with_an_older_sidecar_is_refused(cluster, namespace, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    op = start_operator()
    labels = versioned_deployment(cluster, namespace)
    fleet.node_pod("web-5d8f9c7b6-0", labels=labels, owner=Owner.replicaset_of("web"))  # no protocol stamp
    configs.put_configmap(cluster, namespace, "app-config", config(2))

    rollout_refresh(cluster, namespace, "roll", steps=[1, "100%"])

    obj = wait_phase(cluster, namespace, "roll", "Failed", operator=op)
    complete = next(c for c in obj["status"]["conditions"] if c["type"] == "Complete")
    assert complete["reason"] == "SidecarTooOld"
    assert "restart the workload to get the current sidecar" in complete["message"]
    release = record(cluster, namespace)
    assert release is not None
    assert release.candidate is None, "nothing was proposed"


# -- rolling out ---------------------------------------------------------------------------


def test_a_good_config_rolls_out_step_by_step_with_each_bake(cluster, namespace, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    op = start_operator()
    labels = versioned_deployment(cluster, namespace)
    members = start_pods(fleet, labels, pod_names(4))
    configs.put_configmap(cluster, namespace, "app-config", config(2))

    rollout_refresh(cluster, namespace, "roll", steps=[1, "25%", "100%"], bakeSeconds=2)

    obj = wait_phase(cluster, namespace, "roll", "Succeeded", timeout=90, operator=op)
    rollout = obj["status"]["rollout"]
    assert rollout["state"] == "Completed"
    assert rollout["progress"] == "3/3"
    assert obj["status"]["counts"] == {
        "targets": 4, "acked": 4, "succeeded": 4, "unchanged": 0, "failed": 0, "pending": 0, "skipped": 0,
    }
    steps = rollout["stepStatuses"]
    # 1 pod, then 25% of 4 rounded up -- one more than before, so 2 --, then all 4.
    assert [s["podCount"] for s in steps] == [1, 1, 2]
    assert [s["pods"] for s in steps] == [
        ["web-5d8f9c7b6-0"],
        ["web-5d8f9c7b6-1"],
        ["web-5d8f9c7b6-2", "web-5d8f9c7b6-3"],
    ]
    assert all(s["verdict"] == "Passed" for s in steps)
    for step in steps:
        assert (at(step["completionTime"]) - at(step["bakeStartTime"])).total_seconds() >= 2, step
    for before, after in itertools.pairwise(steps):
        assert at(after["startTime"]) >= at(before["completionTime"]), (
            "a step starts once the one before passed"
        )
    assert [served(m) for m in members] == [2, 2, 2, 2]
    assert all(versions_loaded(m) == [1, 2] for m in members)
    release = record(cluster, namespace)
    assert release is not None
    assert release.candidate is None
    assert release.accepted.revision == rollout["candidateRevision"] == rollout["acceptedRevision"]
    assert {"RolloutStarted", "StepStarted", "StepPassed", "RolloutCompleted"} <= set(
        reasons(cluster, namespace, "roll")
    )
    for n in (1, 2, 3):
        child = cfr(cluster, namespace, f"roll-step-{n}")
        assert child["status"]["phase"] == "Succeeded"
        assert child["metadata"]["labels"]["refreshbus.io/rollout-parent"] == "roll"
        assert child["metadata"]["ownerReferences"][0]["name"] == "roll"


def test_nothing_new_completes_at_once_and_steps_beyond_the_pods_pass_without_a_bake(
    cluster, namespace, fleet, start_operator
):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    op = start_operator()
    labels = versioned_deployment(cluster, namespace)
    (only,) = start_pods(fleet, labels, pod_names(1))
    # Nothing changed yet: nothing to roll out.
    rollout_refresh(cluster, namespace, "noop", steps=[1, "100%"])
    noop = wait_phase(cluster, namespace, "noop", "Succeeded", operator=op)
    assert "nothing to roll out" in noop["status"]["message"]
    assert noop["status"]["rollout"]["stepStatuses"] == []
    assert cfr(cluster, namespace, "noop-step-1") == {}
    configs.put_configmap(cluster, namespace, "app-config", config(2))

    rollout_refresh(cluster, namespace, "roll", steps=[1, "25%", "100%"], bakeSeconds=2)

    obj = wait_phase(cluster, namespace, "roll", "Succeeded", timeout=60, operator=op)
    steps = obj["status"]["rollout"]["stepStatuses"]
    assert [(s["verdict"], s["podCount"]) for s in steps] == [("Passed", 1), ("Passed", 0), ("Passed", 0)]
    assert [s.get("reason") for s in steps[1:]] == ["no pod left to move"] * 2
    assert "bakeStartTime" not in steps[1]
    assert served(only) == 2


def test_a_config_failing_the_health_check_stops_at_the_canary_and_stays_rolled_back(
    cluster, namespace, fleet, start_operator
):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    op = start_operator()
    labels = versioned_deployment(cluster, namespace)
    members = start_pods(fleet, labels, pod_names(4))
    canary, others = members[0], members[1:]
    configs.put_configmap(cluster, namespace, "app-config", config(2, healthy=False))

    rollout_refresh(cluster, namespace, "roll", steps=[1, "25%", "100%"], bakeSeconds=2)

    obj = wait_phase(cluster, namespace, "roll", "RolledBack", timeout=90, operator=op)
    rollout = obj["status"]["rollout"]
    assert rollout["state"] == "RolledBack"
    assert [s["verdict"] for s in rollout["stepStatuses"]] == ["Failed"]
    assert [f["pod"] for f in rollout["failingPods"]] == [canary.name]
    assert (obj["status"]["counts"]["targets"], obj["status"]["counts"]["failed"]) == (4, 1)
    assert "health" in rollout["failingPods"][0]["reason"]
    assert rollout["rollbackRefresh"] == "roll-rollback"
    assert cfr(cluster, namespace, "roll-rollback")["status"]["phase"] == "Succeeded"
    # The canary loaded the bad config and went back; nobody else ever saw it.
    assert versions_loaded(canary) == [1, 2, 1]
    assert served(canary) == 1
    for other in others:
        assert versions_loaded(other) == [1], other.name
    release = record(cluster, namespace)
    assert release is not None
    assert release.candidate is None
    assert [r.revision for r in release.rejected] == [rollout["candidateRevision"]]
    assert {"StepFailed", "RolledBack"} <= set(reasons(cluster, namespace, "roll"))

    # A sidecar restart applies the record's accepted revision, not the ConfigMap.
    canary.kill_sidecar()
    fleet.start_sidecar(canary)
    assert on_disk(canary) == 1
    # So does a pod its ReplicaSet made anew in place of the canary.
    cluster.kubectl("-n", namespace, "delete", "pod", canary.name, "--wait=false")
    fresh = start_pods(fleet, labels, ["web-5d8f9c7b6-new"])[0]
    assert versions_loaded(fresh) == [1]


#: Run in the operator process: it dies right after rejecting a candidate in the record,
#: before status says so (the narrowest window of a rollback).
DIE_AFTER_REJECT = """
import os
from refreshbus_operator import release
_reject = release.reject
async def reject(*args, **kwargs):
    moved = await _reject(*args, **kwargs)
    os._exit(17)
release.reject = reject
"""


def test_an_operator_dying_between_reject_and_rollback_finishes_the_rollback_when_back(
    cluster, namespace, fleet, start_operator
):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    op = start_operator(inject=DIE_AFTER_REJECT)
    labels = versioned_deployment(cluster, namespace)
    canary, other = start_pods(fleet, labels, pod_names(2))
    configs.put_configmap(cluster, namespace, "app-config", config(2, healthy=False))

    rollout_refresh(cluster, namespace, "roll", steps=[1, "100%"], bakeSeconds=1)
    wait_for(lambda: not op.alive, 60, "the operator to die after rejecting the candidate")
    assert cfr(cluster, namespace, "roll")["status"]["phase"] == "InProgress"
    release = record(cluster, namespace)
    assert release is not None
    assert release.candidate is None
    assert len(release.rejected) == 1
    assert served(canary) == 2, "the record says accepted, but nobody told the canary yet"

    op = start_operator()

    obj = wait_phase(cluster, namespace, "roll", "RolledBack", timeout=60, operator=op)
    assert obj["status"]["rollout"]["rollbackRefresh"] == "roll-rollback"
    assert served(canary) == 1
    assert versions_loaded(other) == [1]


def test_a_rollout_survives_an_operator_restart_and_pauses_and_resumes(
    cluster, namespace, fleet, start_operator
):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    op = start_operator()
    labels = versioned_deployment(cluster, namespace)
    members = start_pods(fleet, labels, pod_names(3))
    configs.put_configmap(cluster, namespace, "app-config", config(2))

    rollout_refresh(cluster, namespace, "roll", steps=[1, "100%"], bakeSeconds=6)
    wait_rollout(
        cluster, namespace, "roll", lambda r: r.get("state") == "Baking", "step 1 baking", operator=op
    )
    step1 = cfr(cluster, namespace, "roll-step-1")
    # Killed mid-bake: no clean-up at all.
    op.kill()
    set_paused(cluster, namespace, "roll", True)
    op = start_operator()

    obj = wait_rollout(
        cluster, namespace, "roll", lambda r: r.get("state") == "Paused", "paused before step 2", operator=op
    )
    assert obj["status"]["rollout"]["step"] == 1
    assert obj["status"]["rollout"]["stepStatuses"][0]["verdict"] == "Passed"
    assert cfr(cluster, namespace, "roll-step-2") == {}, "no step starts while paused"
    again = cfr(cluster, namespace, "roll-step-1")
    assert again["metadata"]["uid"] == step1["metadata"]["uid"], "the resumed step was not started anew"
    assert [served(m) for m in members] == [2, 1, 1]

    set_paused(cluster, namespace, "roll", False)

    obj = wait_phase(cluster, namespace, "roll", "Succeeded", timeout=60, operator=op)
    assert [s["podCount"] for s in obj["status"]["rollout"]["stepStatuses"]] == [1, 2]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert [served(m) for m in members] == [2, 2, 2]
    assert all(versions_loaded(m) == [1, 2] for m in members), "pausing re-sent nothing"
    assert {"Paused", "Resumed"} <= set(reasons(cluster, namespace, "roll"))


def test_a_configmap_edit_after_a_rollback_starts_a_new_rollout(cluster, namespace, fleet, start_operator):
    configs.put_configmap(cluster, namespace, "app-config", config(1))
    start_operator()
    labels = versioned_deployment(cluster, namespace, auto_refresh=True, steps="1,100%", bake="1s")
    members = start_pods(fleet, labels, pod_names(3))

    def auto_refreshes() -> list[dict[str, Any]]:
        items = cluster.get_json("-n", namespace, "cfr", "-l", "refreshbus.io/auto-refresh-for=web")["items"]
        return sorted(items, key=lambda i: i["metadata"]["creationTimestamp"])

    def final(n: int) -> list[dict[str, Any]] | None:
        done = [
            i for i in auto_refreshes() if i.get("status", {}).get("phase") in ("Succeeded", "RolledBack")
        ]
        return done if len(done) >= n else None

    configs.put_configmap(cluster, namespace, "app-config", config(2, healthy=False))
    first = wait_for(lambda: final(1), 60, "the auto-created rollout of the bad edit to finish")[0]
    assert first["spec"]["rollout"]["steps"] == [1, "100%"]
    assert first["status"]["phase"] == "RolledBack", first["status"]
    assert [served(m) for m in members] == [1, 1, 1]

    configs.put_configmap(cluster, namespace, "app-config", config(3))
    done = wait_for(lambda: final(2), 60, "a new auto-created rollout of the next edit")
    assert done[-1]["status"]["phase"] == "Succeeded", done[-1]["status"]
    assert [served(m) for m in members] == [3, 3, 3]
    assert [v for v in versions_loaded(members[1]) if v == 2] == [], "the bad config never reached the rest"
