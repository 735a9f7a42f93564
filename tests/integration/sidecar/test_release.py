"""Protocol 1.3, the release record, with real sidecar processes, a real API server and a
real app: the record, not the ConfigMap, says what each pod of a versioned workload runs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
from refreshbus_support import configs
from refreshbus_support.apps import App
from refreshbus_support.bus import TestBus, make_event
from refreshbus_support.pods import Owner, TestPod, create_pod
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_wire import pods as podc
from refreshbus_wire.events import AckResult, RefreshEvent, ReleaseRef, Scope, Target
from refreshbus_wire.hashing import content_hash
from refreshbus_wire.release import Candidate, Release, Revision, record_name, snapshot

from .conftest import Apps, Sidecars

pytestmark = pytest.mark.integration

WORKLOAD = ("Deployment", "web")
RECORD = record_name(*WORKLOAD)
GOOD = {"config.json": b'{"v": "good"}'}
NEW = {"config.json": b'{"v": "new"}'}
BAD = {"config.json": '{"v": "bad"}'}


def version(files: dict[str, bytes]) -> dict[str, object]:
    return {"ConfigMap/settings": snapshot("ConfigMap", "settings", files)}


def put_record(cluster: ControlPlane, namespace: str, accepted: dict[str, bytes], *, revision: int = 1,
               candidate: dict[str, bytes] | None = None, pods: tuple[str, ...] = ()) -> None:
    release = Release(*WORKLOAD, accepted=Revision(revision, version(accepted)), candidate=(
        None if candidate is None else Candidate(revision + 1, version(candidate), pods=pods)))
    contents = {content_hash("ConfigMap", "settings", files): files
                for files in (accepted, candidate) if files is not None}
    configs.put_release_record(cluster, namespace, release, contents)


def web_pod(cluster: ControlPlane, namespace: str, name: str, process: str) -> TestPod:
    return create_pod(cluster, namespace, name, owner=Owner.replicaset_of("web"), configmaps=["settings"],
                      action={podc.ENV_ACTION: "signal", podc.ENV_PROCESS: process})


def to_pod(event: RefreshEvent, pod: TestPod) -> RefreshEvent:
    return dataclasses.replace(event, target=Target(Scope.POD, namespace=pod.namespace, name=pod.name))


def served(app: App) -> tuple[object, int]:
    body = json.loads(app.get("/")[1])
    return body["config"], body["loads"]


def app_started(app: App) -> None:
    """The app reads the config the sidecar wrote at start-up (in a pod it starts after the
    sidecar's first sync; here it was already running, so it is told to read it now)."""
    os.kill(app.pid, signal.SIGHUP)
    app.wait_for(lambda body: json.loads(body)["loads"] == 1)


def test_the_accepted_revision_is_applied_instead_of_the_configmap_and_survives_a_restart(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", BAD)  # e.g. a rejected edit
    put_record(cluster, namespace, GOOD)
    shared = tmp_path / "shared"
    node = apps.node(shared / "configmap-settings" / "config.json")
    pod = web_pod(cluster, namespace, "web-0", node.process_pattern)

    first = sidecars.start(pod, target_dir=shared)
    app_started(node)
    assert first.metrics()["refreshbus_sidecar_release_revision"] == 1
    first.stop()
    again = sidecars.start(pod, target_dir=shared)  # a restarted sidecar: same volume
    fresh = sidecars.start(web_pod(cluster, namespace, "web-1", "no-such-process"))  # a new pod

    assert (shared / "configmap-settings" / "config.json").read_bytes() == GOOD["config.json"]
    assert again.metrics()["refreshbus_sidecar_release_revision"] == 1
    assert served(node) == ({"v": "good"}, 1)  # never the ConfigMap's content, never reloaded
    assert (fresh.target_dir / "configmap-settings" / "config.json").read_bytes() == GOOD["config.json"]


def test_a_canary_gets_the_candidate_others_keep_the_accepted_one_and_a_rollback_returns(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, apps: Apps, bus: TestBus, tmp_path: Path
) -> None:
    rv = configs.put_configmap(cluster, namespace, "settings", {"config.json": NEW["config.json"].decode()})
    put_record(cluster, namespace, GOOD)
    nodes, pods = [], []
    for i in range(2):
        shared = tmp_path / f"shared-{i}"
        nodes.append(apps.node(shared / "configmap-settings" / "config.json"))
        pods.append(web_pod(cluster, namespace, f"web-{i}", nodes[-1].process_pattern))
        sidecars.start(pods[-1], target_dir=shared)
        app_started(nodes[-1])
    canary, other = pods

    put_record(cluster, namespace, GOOD, candidate=NEW, pods=(canary.name,))
    step = to_pod(dataclasses.replace(make_event(namespace, [("ConfigMap", "settings", rv)]),
                                      release=ReleaseRef(RECORD, 2)), canary)
    bus.publish(step)
    moved = bus.wait_ack(step.id, canary.name)
    everyone = dataclasses.replace(make_event(namespace, [("ConfigMap", "settings", rv)]),
                                   release=ReleaseRef(RECORD, 2))
    bus.publish(everyone)  # a plain nudge to both: each applies what the record says for it
    nudged = {a.pod: a for a in bus.wait_acks(everyone.id, 2)}

    assert (moved.result, moved.revision) == (AckResult.OK, 2)
    assert served(nodes[0]) == ({"v": "new"}, 2)
    assert (nudged[canary.name].result, nudged[canary.name].revision) == (AckResult.UNCHANGED, 2)
    assert (nudged[other.name].result, nudged[other.name].revision) == (AckResult.UNCHANGED, 1)
    assert served(nodes[1]) == ({"v": "good"}, 1)  # never saw the candidate

    put_record(cluster, namespace, GOOD)  # rejected: the candidate is gone, the ConfigMap unchanged
    back = to_pod(dataclasses.replace(make_event(namespace, [("ConfigMap", "settings", rv)]),
                                      release=ReleaseRef(RECORD, 1)), canary)
    bus.publish(back)
    rolled_back = bus.wait_ack(back.id, canary.name)

    assert (rolled_back.result, rolled_back.revision) == (AckResult.OK, 1)
    assert served(nodes[0]) == ({"v": "good"}, 3)


def test_without_a_record_the_configmap_is_followed_and_acks_carry_no_revision(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", {"a": "1"})
    pod = create_pod(cluster, namespace, "web-0", owner=Owner.replicaset_of("web"), configmaps=["settings"],
                     action={podc.ENV_ACTION: "none"})
    sidecar = sidecars.start(pod)
    rv = configs.put_configmap(cluster, namespace, "settings", {"a": "2"})
    event = make_event(namespace, [("ConfigMap", "settings", rv)])

    bus.publish(event)
    ack = bus.wait_ack(event.id)

    assert (ack.result, ack.revision) == (AckResult.OK, None)
    assert (sidecar.target_dir / "configmap-settings" / "a").read_text() == "2"
    assert sidecar.metrics()["refreshbus_sidecar_release_revision"] == 0


def test_an_unusable_record_fails_the_refresh_and_keeps_the_config(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", BAD)
    put_record(cluster, namespace, GOOD)
    pod = create_pod(cluster, namespace, "web-0", owner=Owner.replicaset_of("web"), configmaps=["settings"],
                     action={podc.ENV_ACTION: "none"})
    sidecar = sidecars.start(pod)
    cluster.kubectl("-n", namespace, "patch", "configmap", RECORD, "--type=merge",
                    "-p", json.dumps({"data": {"release.json": '{"v": 2}'}}))
    event = dataclasses.replace(make_event(namespace, [("ConfigMap", "settings")]),
                                release=ReleaseRef(RECORD, 1))

    bus.publish(event)
    ack = bus.wait_ack(event.id)

    assert ack.result is AckResult.FAILED
    assert ack.error == (f"unusable release record, keeping the current config: ConfigMap {RECORD}: "
                         "release.json: format v=2, this build reads v=1 only")
    assert (sidecar.target_dir / "configmap-settings" / "config.json").read_bytes() == GOOD["config.json"]


def test_an_event_ahead_of_the_record_waits_for_it_then_fails_with_the_reason(
    cluster: ControlPlane, namespace: str, sidecars: Sidecars, bus: TestBus, tmp_path: Path
) -> None:
    configs.put_configmap(cluster, namespace, "settings", BAD)
    put_record(cluster, namespace, GOOD)
    pod = create_pod(cluster, namespace, "web-0", owner=Owner.replicaset_of("web"), configmaps=["settings"],
                     action={podc.ENV_ACTION: "none"})
    sidecar = sidecars.start(pod)
    event = dataclasses.replace(make_event(namespace, [("ConfigMap", "settings")]),
                                release=ReleaseRef(RECORD, 2))

    bus.publish(event)
    ack = bus.wait_ack(event.id)

    assert ack.result is AckResult.FAILED
    assert ack.error == f"release record {RECORD}: the API server still has revision 1, the event expects 2"
    assert (sidecar.target_dir / "configmap-settings" / "config.json").read_bytes() == GOOD["config.json"]
