"""The ConfigRefresh CRD on a real kube-apiserver: what users can apply, what they cannot, and why.

Each test applies objects with the real `kubectl` to the API server started by the test harness
(`cluster` fixture) in a fresh namespace, and checks what the server says back: examples are
accepted, defaults are filled in, bad specs are rejected with a message that names the problem,
`kubectl explain` shows the documentation and `kubectl get cfr` shows the printer columns.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

Obj = dict[str, Any]


class Cluster(Protocol):
    """What these tests use of the harness's `cluster` fixture."""

    kubeconfig: str

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...

    def apply_crds(self) -> None: ...


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Cluster:
    """The cluster with the CRDs from crds/ applied and Established."""
    cluster.apply_crds()
    return cluster


def configrefresh(spec: Obj, name: str = "cfr-test") -> Obj:
    return {
        "apiVersion": "refreshbus.io/v1alpha1",
        "kind": "ConfigRefresh",
        "metadata": {"name": name},
        "spec": spec,
    }


VALID_SPEC: Obj = {
    "sources": [{"configMap": {"name": "app-config"}}],
    "target": {"workload": {"kind": "Deployment", "name": "orders"}},
}


def apply(cluster: Cluster, namespace: str, obj: Obj, *, dry_run: bool) -> subprocess.CompletedProcess[str]:
    args = ["apply", "-n", namespace, "-f", "-", "-o", "json"]
    if dry_run:
        args.append("--dry-run=server")
    return cluster.kubectl(*args, input=json.dumps(obj), check=False)


def get(cluster: Cluster, namespace: str, name: str) -> Obj:
    out = cluster.kubectl("get", "configrefresh", name, "-n", namespace, "-o", "json").stdout
    obj: Obj = json.loads(out)
    return obj


# --- valid input --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_by_the_server(crds: Cluster, namespace: str, path: Path) -> None:
    result = crds.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)

    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout


def test_basic_example_is_stored_with_defaults_filled(crds: Cluster, namespace: str) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "refresh.yaml"))

    stored = get(crds, namespace, "refresh-orders")

    assert stored["spec"] == {
        "sources": [{"configMap": {"name": "app-config"}}],
        "target": {"workload": {"kind": "Deployment", "name": "orders"}},
        "deadlineSeconds": 60,
    }
    assert "status" not in stored, "status is the operator's: nothing is there before it acts"


def test_action_defaults_are_filled(crds: Cluster, namespace: str) -> None:
    http = configrefresh(VALID_SPEC | {"action": {"http": {"port": 8080, "path": "/-/reload"}}}, "http")
    signal = configrefresh(VALID_SPEC | {"action": {"signal": {}}}, "signal")

    for obj in (http, signal):
        result = apply(crds, namespace, obj, dry_run=False)
        assert result.returncode == 0, result.stderr

    assert get(crds, namespace, "http")["spec"]["action"] == {
        "http": {"method": "POST", "port": 8080, "path": "/-/reload", "timeoutSeconds": 5}
    }
    assert get(crds, namespace, "signal")["spec"]["action"] == {"signal": {"name": "SIGHUP"}}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(VALID_SPEC | {"target": {"destination": "**"}}, id="destination-everyone"),
        pytest.param(VALID_SPEC | {"target": {"destination": "orders"}}, id="destination-app-only"),
        pytest.param(
            VALID_SPEC | {"target": {"destination": "orders:orders-7d9f*"}}, id="destination-some-pods"
        ),
        pytest.param(
            VALID_SPEC | {"target": {"destination": "cust?mers:**:abc123"}}, id="destination-mid-**"
        ),
        pytest.param(
            VALID_SPEC
            | {"target": {"selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}},
            id="selector-exists-only",
        ),
        pytest.param(
            VALID_SPEC
            | {"sources": [{"configMap": {"name": "same-name"}}, {"secret": {"name": "same-name"}}]},
            id="configmap-and-secret-with-the-same-name",
        ),
        pytest.param(
            VALID_SPEC | {"target": {"pods": [f"orders-{i}" for i in range(100)]}}, id="100-pod-names"
        ),
        pytest.param(VALID_SPEC | {"deadlineSeconds": 3600}, id="deadline-max"),
        pytest.param(VALID_SPEC | {"action": {"http": {"port": 65535, "path": "/r?x=1"}}}, id="http-edges"),
        pytest.param(VALID_SPEC | {"action": {"none": {}}}, id="action-none"),
        pytest.param(VALID_SPEC | {"rollout": {"steps": ["100%"]}}, id="rollout-all-at-once"),
        pytest.param(
            VALID_SPEC | {"rollout": {"steps": [1, 3, "50%", "100%"]}}, id="rollout-counts-and-percent"
        ),
        pytest.param(
            VALID_SPEC | {"rollout": {"steps": [1, "1%", "99%", "100%"], "bakeSeconds": 0, "maxFailures": 3,
                                      "autoRollback": False, "paused": True}},
            id="rollout-every-field",
        ),
    ],
)
def test_edge_values_are_accepted(crds: Cluster, namespace: str, spec: Obj) -> None:
    result = apply(crds, namespace, configrefresh(spec), dry_run=True)

    assert result.returncode == 0, result.stderr


# --- invalid input ------------------------------------------------------------------------------


def without(key: str) -> Callable[[Obj], None]:
    def edit(spec: Obj) -> None:
        del spec[key]

    return edit


def setting(path: str, value: Any) -> Callable[[Obj], None]:
    """An edit that sets spec.<path> (dot-separated) to value, replacing what was there."""

    def edit(spec: Obj) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)

    return edit


def both(*edits: Callable[[Obj], None]) -> Callable[[Obj], None]:
    def edit(spec: Obj) -> None:
        for one in edits:
            one(spec)

    return edit


def http(**overrides: Any) -> Callable[[Obj], None]:
    return setting("action", {"http": {"port": 8080, "path": "/-/reload"} | overrides})


ONLY_ONE_SOURCE_KIND = (
    "each source must set only one of configMap or secret; "
    "list a ConfigMap and a Secret as two separate sources"
)
DESTINATION_SYNTAX = (
    'destination must be a Spring Cloud Bus pattern such as "orders", "orders:**" or "**": '
    "':'-separated, non-empty segments of letters, digits, '.', '_', '-', '*' and '?' "
    "(no spaces, no empty segments)"
)

REJECTED: list[Any] = [
    pytest.param(without("target"), "spec.target: Required value", id="no-target"),
    pytest.param(
        setting("target", {}),
        "target must set one of workload, selector, pods or destination",
        id="empty-target",
    ),
    pytest.param(
        setting("target.pods", ["orders-1"]),
        "target must set only one of workload, selector, pods or destination, but sets workload and pods",
        id="two-targets",
    ),
    pytest.param(
        setting("target", {"workload": {"kind": "Job", "name": "x"}}),
        'spec.target.workload.kind: Unsupported value: "Job"',
        id="unknown-workload-kind",
    ),
    pytest.param(
        setting("action", {"signal": {"name": "SIGHUP"}, "http": {"port": 8080, "path": "/-/reload"}}),
        "action must set only one of signal, http or none, but sets signal and http",
        id="signal-and-http",
    ),
    pytest.param(
        setting("action", {}),
        "action must set one of signal, http or none",
        id="empty-action",
    ),
    pytest.param(
        setting("action", {"signal": {"name": "SIGFOO"}}),
        'spec.action.signal.name: Unsupported value: "SIGFOO": supported values: "SIGHUP"',
        id="unknown-signal",
    ),
    pytest.param(
        setting("action", {"signal": {"name": "HUP"}}),
        'spec.action.signal.name: Unsupported value: "HUP"',
        id="signal-without-SIG-prefix",
    ),
    pytest.param(
        setting("deadlineSeconds", -5),
        "spec.deadlineSeconds: Invalid value: -5: "
        "spec.deadlineSeconds in body should be greater than or equal to 1",
        id="negative-deadline",
    ),
    pytest.param(
        setting("deadlineSeconds", 86400),
        "spec.deadlineSeconds: Invalid value: 86400: "
        "spec.deadlineSeconds in body should be less than or equal to 3600",
        id="absurd-deadline",
    ),
    pytest.param(
        setting("target", {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
        "values must be non-empty when operator is In or NotIn",
        id="selector-In-without-values",
    ),
    pytest.param(
        setting(
            "target",
            {"selector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}},
        ),
        "values must be empty when operator is Exists or DoesNotExist",
        id="selector-Exists-with-values",
    ),
    pytest.param(
        setting(
            "target",
            {"selector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}},
        ),
        'spec.target.selector.matchExpressions[0].operator: Unsupported value: "Equals"',
        id="selector-unknown-operator",
    ),
    pytest.param(
        setting("target", {"selector": {"matchLabels": {"app": "not a label value"}}}),
        "spec.target.selector.matchLabels.app in body should match",
        id="selector-bad-label-value",
    ),
    pytest.param(
        setting("target", {"selector": {"matchLabels": {"not a key!": "x"}}}),
        "matchLabels keys must be label keys",
        id="selector-bad-label-key",
    ),
    pytest.param(
        setting("target", {"selector": {}}),
        "selector must not be empty (it would match every pod)",
        id="empty-selector",
    ),
    pytest.param(
        setting("target", {"selector": {"matchLabels": {}, "matchExpressions": []}}),
        "selector must not be empty (it would match every pod)",
        id="selector-with-empty-terms",
    ),
    *(
        pytest.param(
            setting("target", {"destination": pattern}),
            f'spec.target.destination: Invalid value: "string": "{pattern}": {DESTINATION_SYNTAX}',
            id=f"destination-{name}",
        )
        for name, pattern in [
            ("empty-segment", "orders::x"),
            ("trailing-colon", "orders:"),
            ("leading-colon", ":orders"),
            ("space", "orders :**"),
            ("slash", "orders/**"),
        ]
    ),
    pytest.param(
        setting("sources", [{}]),
        "each source must name a ConfigMap or a Secret: set configMap: {name: ...} or secret: {name: ...}",
        id="source-with-neither",
    ),
    pytest.param(
        setting("sources", [{"configMap": {"name": "a"}, "secret": {"name": "a"}}]),
        ONLY_ONE_SOURCE_KIND,
        id="source-with-both",
    ),
    pytest.param(
        setting("sources", [{"configMap": {"name": "app-config"}}, {"configMap": {"name": "app-config"}}]),
        'sources must not list the same ConfigMap twice: ConfigMap "app-config" appears more than once',
        id="duplicate-configmap",
    ),
    pytest.param(
        setting(
            "sources",
            [{"secret": {"name": "creds"}}, {"configMap": {"name": "creds"}}, {"secret": {"name": "creds"}}],
        ),
        'sources must not list the same Secret twice: Secret "creds" appears more than once',
        id="duplicate-secret",
    ),
    pytest.param(
        setting("sources", []),
        "spec.sources in body should have at least 1 items",
        id="empty-sources",
    ),
    pytest.param(without("sources"), "spec.sources: Required value", id="no-sources"),
    pytest.param(
        setting("sources", [{"configMap": {"name": f"cm-{i}"}} for i in range(17)]),
        "spec.sources: Too many: 17: must have at most 16 items",
        id="17-sources",
    ),
    pytest.param(
        setting("target", {"pods": [f"orders-{i}" for i in range(101)]}),
        "spec.target.pods: Too many: 101: must have at most 100 items",
        id="101-pod-names",
    ),
    pytest.param(
        setting("target", {"pods": ["orders-1", "orders-1"]}),
        'spec.target.pods[1]: Duplicate value: "orders-1"',
        id="duplicate-pod-names",
    ),
    pytest.param(
        setting("target", {"pods": ["Orders_1"]}),
        "spec.target.pods[0] in body should match",
        id="pod-name-not-dns",
    ),
    pytest.param(
        http(port=0),
        "spec.action.http.port: Invalid value: 0: "
        "spec.action.http.port in body should be greater than or equal to 1",
        id="http-port-0",
    ),
    pytest.param(
        http(port=70000),
        "spec.action.http.port: Invalid value: 70000: "
        "spec.action.http.port in body should be less than or equal to 65535",
        id="http-port-70000",
    ),
    pytest.param(
        http(path="-/reload"),
        "\"-/reload\": path must start with '/' and contain no spaces, e.g. /-/reload",
        id="http-path-without-slash",
    ),
    pytest.param(
        http(method="DELETE"),
        'spec.action.http.method: Unsupported value: "DELETE"',
        id="http-method",
    ),
    pytest.param(
        http(timeoutSeconds=61),
        "spec.action.http.timeoutSeconds in body should be less than or equal to 60",
        id="http-timeout-61",
    ),
    pytest.param(
        both(http(), setting("deadlineSeconds", 5)),  # the http timeoutSeconds defaults to 5
        'spec: Invalid value: "object": deadlineSeconds must be greater than action.http.timeoutSeconds',
        id="deadline-not-longer-than-http-timeout",
    ),
    pytest.param(
        setting("action", {"http": {"path": "/-/reload"}}),
        "spec.action.http.port: Required value",
        id="http-without-port",
    ),    pytest.param(
        setting("rollout.steps", [1, "25%"]),
        'the last rollout step must be "100%"',
        id="rollout-last-step-not-100%",
    ),
    pytest.param(
        setting("rollout.steps", [3, 2, "100%"]),
        "rollout step pod counts must increase from step to step",
        id="rollout-counts-decrease",
    ),
    pytest.param(
        setting("rollout.steps", [1, 1, "100%"]),
        "rollout step pod counts must increase from step to step",
        id="rollout-counts-repeat",
    ),
    pytest.param(
        setting("rollout.steps", ["50%", "25%", "100%"]),
        "rollout step percentages must increase from step to step",
        id="rollout-percentages-decrease",
    ),
    pytest.param(
        setting("rollout.steps", [0, "100%"]),
        "each rollout step is a pod count from 1 to 10000 or a percentage",
        id="rollout-zero-pods",
    ),
    pytest.param(
        setting("rollout.steps", ["half", "100%"]),
        "each rollout step is a pod count from 1 to 10000 or a percentage",
        id="rollout-step-not-a-number",
    ),
    pytest.param(
        setting("rollout.steps", ["150%"]),
        "each rollout step is a pod count from 1 to 10000 or a percentage",
        id="rollout-over-100%",
    ),
    pytest.param(
        both(setting("rollout", {}), setting("sources", [{"secret": {"name": "creds"}}])),
        "a rollout (spec.rollout) can only roll out ConfigMaps",
        id="rollout-of-a-secret",
    ),
    pytest.param(
        both(setting("rollout", {}), setting("target", {"destination": "**"})),
        "a rollout (spec.rollout) needs target.workload",
        id="rollout-without-workload",
    ),
    pytest.param(
        setting("rollout.bakeSeconds", -1),
        "spec.rollout.bakeSeconds in body should be greater than or equal to 0",
        id="rollout-negative-bake",
    ),
]


@pytest.mark.parametrize(("edit", "message"), REJECTED)
def test_bad_spec_is_rejected_with_a_clear_message(
    crds: Cluster, namespace: str, edit: Callable[[Obj], None], message: str
) -> None:
    spec = copy.deepcopy(VALID_SPEC)
    edit(spec)

    result = apply(crds, namespace, configrefresh(spec), dry_run=True)

    assert result.returncode != 0, f"accepted: {json.dumps(spec)}"
    assert 'The ConfigRefresh "cfr-test" is invalid' in result.stderr
    assert message in result.stderr


def test_rollout_defaults_are_filled(crds: Cluster, namespace: str) -> None:
    result = apply(crds, namespace, configrefresh(VALID_SPEC | {"rollout": {}}, "rollout"), dry_run=False)
    assert result.returncode == 0, result.stderr

    assert get(crds, namespace, "rollout")["spec"]["rollout"] == {
        "steps": [1, "25%", "100%"], "bakeSeconds": 30, "maxFailures": 0, "autoRollback": True,
        "paused": False,
    }


def test_unknown_field_is_rejected(crds: Cluster, namespace: str) -> None:
    obj = configrefresh(VALID_SPEC | {"targets": {"destination": "**"}})

    result = apply(crds, namespace, obj, dry_run=True)

    assert result.returncode != 0
    assert 'unknown field "spec.targets"' in result.stderr


# --- status -------------------------------------------------------------------------------------


def finished_status(generation: int) -> Obj:
    """A status as the operator writes it at the end of a partly failed refresh."""
    at = "2025-01-01T00:00:02Z"
    return {
        "phase": "PartiallyFailed",
        "message": "2 of 3 pods reloaded; orders-c: reload endpoint returned 500",
        "eventId": "0b9c2f9e-5a8a-4c4e-9d6b-7f5f2b1f3c11",
        "observedGeneration": generation,
        "startTime": "2025-01-01T00:00:01Z",
        "completionTime": at,
        "counts": {
            "targets": 3,
            "acked": 3,
            "succeeded": 2,
            "unchanged": 1,
            "failed": 1,
            "pending": 0,
            "skipped": 1,
        },
        "results": [
            {"pod": "orders-c", "result": "failed", "reason": "reload endpoint returned 500", "at": at},
            {"pod": "orders-a", "result": "ok", "configHash": "sha256:ab12", "latencyMs": 412, "at": at},
            {
                "pod": "orders-b",
                "result": "unchanged",
                "configHash": "sha256:ab12",
                "latencyMs": 380,
                "at": at,
            },
        ],
        "resultsTruncated": 0,
        "skipped": [{"pod": "orders-d", "reason": "not running"}],
        "conditions": [
            {
                "type": "Complete",
                "status": "True",
                "reason": "PartiallyFailed",
                "message": "2 of 3 pods reloaded",
                "lastTransitionTime": at,
                "observedGeneration": generation,
            }
        ],
    }


def test_status_is_written_through_the_status_subresource_only(crds: Cluster, namespace: str) -> None:
    obj = configrefresh(VALID_SPEC, "refresh-orders") | {"status": {"phase": "Succeeded"}}
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    assert "status" not in get(crds, namespace, "refresh-orders"), "status in the main resource is ignored"

    status = finished_status(get(crds, namespace, "refresh-orders")["metadata"]["generation"])
    crds.kubectl(
        "patch", "configrefresh", "refresh-orders", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip

    assert get(crds, namespace, "refresh-orders")["status"] == status


@pytest.mark.parametrize(
    ("status", "message"),
    [
        pytest.param({"phase": "Done"}, 'status.phase: Unsupported value: "Done"', id="unknown-phase"),
        pytest.param(
            {"results": [{"pod": "orders-a", "result": "maybe"}]},
            'status.results[0].result: Unsupported value: "maybe"',
            id="unknown-result",
        ),
        pytest.param(
            {"results": [{"pod": f"p-{i}", "result": "ok"} for i in range(101)]},
            "status.results: Too many: 101: must have at most 100 items",
            id="unbounded-results",
        ),
    ],
)
def test_status_that_breaks_the_contract_is_rejected(
    crds: Cluster, namespace: str, status: Obj, message: str
) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(configrefresh(VALID_SPEC)))

    result = crds.kubectl(
        "patch", "configrefresh", "cfr-test", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}),
        check=False,
    )  # fmt: skip

    assert result.returncode != 0
    assert message in result.stderr


# --- what kubectl shows -------------------------------------------------------------------------


def test_get_shows_the_printer_columns(crds: Cluster, namespace: str) -> None:
    crds.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(configrefresh(VALID_SPEC, "refresh-orders"))
    )
    status = finished_status(1)
    crds.kubectl(
        "patch", "cfr", "refresh-orders", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip

    table = crds.kubectl("get", "cfr", "-n", namespace).stdout.splitlines()
    wide = crds.kubectl("get", "cfr", "-n", namespace, "-o", "wide").stdout.splitlines()

    assert table[0].split() == ["NAME", "PHASE", "STEP", "TARGETS", "SUCCEEDED", "FAILED", "AGE"]
    # A plain refresh has no step: the column is blank.
    assert table[1].split()[:5] == ["refresh-orders", "PartiallyFailed", "3", "2", "1"]
    assert wide[0].split() == [
        "NAME", "PHASE", "STEP", "TARGETS", "SUCCEEDED", "FAILED", "AGE", "EVENT", "MESSAGE"
    ]
    assert status["eventId"] in wide[1]


def test_get_shows_a_rollouts_step(crds: Cluster, namespace: str) -> None:
    obj = configrefresh(VALID_SPEC | {"rollout": {}}, "rollout-orders")
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    status = {"phase": "InProgress", "rollout": {
        "state": "Baking", "step": 2, "steps": 3, "progress": "2/3",
        "release": "refreshbus-release-deployment-orders",
        "candidateRevision": 4, "acceptedRevision": 3,
        "stepStatuses": [{"step": 1, "refresh": "rollout-orders-step-1", "pods": ["orders-a"], "podCount": 1,
                          "verdict": "Passed", "startTime": "2025-01-01T00:00:01Z",
                          "bakeStartTime": "2025-01-01T00:00:02Z", "completionTime": "2025-01-01T00:00:32Z"}],
        "failingPods": [],
    }}
    crds.kubectl(
        "patch", "cfr", "rollout-orders", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip

    table = crds.kubectl("get", "cfr", "-n", namespace).stdout.splitlines()

    assert table[1].split()[:3] == ["rollout-orders", "InProgress", "2/3"]
    assert get(crds, namespace, "rollout-orders")["status"]["rollout"] == status["rollout"]


def test_short_name_and_category_list_configrefreshes(crds: Cluster, namespace: str) -> None:
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(configrefresh(VALID_SPEC, "by-name")))

    for resource in (
        "cfr",
        "configrefresh",
        "configrefreshes",
        "configrefreshes.refreshbus.io",
        "refreshbus",
    ):
        names = crds.kubectl("get", resource, "-n", namespace, "-o", "name").stdout.split()
        assert names == ["configrefresh.refreshbus.io/by-name"], resource


def explain(cluster: Cluster, field: str, expected: str, timeout: float = 30.0) -> str:
    """`kubectl explain field`, retried until it mentions `expected`.

    A new CRD's schema reaches the published OpenAPI a moment after the CRD is Established.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = cluster.kubectl("explain", field, check=False)
        if (result.returncode == 0 and expected in result.stdout) or time.monotonic() > deadline:
            return result.stdout + result.stderr
        time.sleep(0.5)


def test_explain_target_reads_like_documentation(crds: Cluster) -> None:
    out = " ".join(explain(crds, "configrefresh.spec.target", "destination").split())

    assert "GROUP: refreshbus.io" in out
    assert "KIND: ConfigRefresh" in out
    assert "VERSION: v1alpha1" in out
    assert "Which pods, in this ConfigRefresh's namespace, get the refresh. Set exactly one of:" in out
    assert "Matching no pod at all is not a validation error" in out
    for field in ("workload", "selector", "pods", "destination"):
        assert f"{field}\t" in explain(crds, "configrefresh.spec.target", "destination")
    assert "Refresh every pod of one workload" in out
    assert "A Spring Cloud Bus destination pattern" in out


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("configrefresh", "Think of it as Spring Cloud Bus's `/busrefresh/{destination}` for any container."),
        ("configrefresh.spec.target.destination", "`orders` or `orders:**` (every instance of orders)"),
        ("configrefresh.spec.action.http.timeoutSeconds", "Defaults to 5."),
        ("configrefresh.spec.deadlineSeconds", "defaults to 60."),
        ("configrefresh.status.phase", "`TimedOut`: the deadline passed before every target answered."),
        ("configrefresh.status.counts.failed", "did not answer before the deadline"),
        ("configrefresh.spec.rollout.paused", "toggling it does not restart the rollout"),
        ("configrefresh.status.rollout.state", "`RolledBack`: a step failed"),
    ],
)
def test_explain_documents_each_field(crds: Cluster, field: str, expected: str) -> None:
    out = " ".join(explain(crds, field, expected.split()[0]).split())

    assert expected in out
