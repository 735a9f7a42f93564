"""Which pods without their sidecar are reported (injection.skipped.missed): those the
webhook would have acted on, had it been called."""

from __future__ import annotations

from typing import Any

import pytest
from refreshbus_operator.injection.config import InjectionConfig
from refreshbus_operator.injection.security import Namespace
from refreshbus_operator.injection.skipped import missed
from refreshbus_wire import pods

CONFIG = InjectionConfig(sidecar_image="example/sidecar:1", operator_namespace="refreshbus-system")
NS = Namespace("apps")


def pod(
    annotations: dict[str, str], labels: dict[str, str] | None = None, sidecar: bool = False
) -> dict[str, Any]:
    init = [{"name": pods.SIDECAR_CONTAINER, "image": "x"}] if sidecar else []
    return {
        "metadata": {"name": "web-1", "namespace": "apps", "uid": "u1", "annotations": annotations,
                     "labels": labels or {}},
        "spec": {"initContainers": init, "containers": [{"name": "app", "image": "nginx"}]},
    }


ASKS = {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "web-config"}


def test_a_pod_the_webhook_would_have_injected_is_reported() -> None:
    message = missed(pod(ASKS), NS, CONFIG)
    assert message is not None
    assert "asks for the refreshbus sidecar (refreshbus.io/inject) but was created without it" in message
    assert "would inject it" in message
    assert missed(pod({pods.ANN_CONFIGMAPS: "web-config"}, {pods.ANN_INJECT: "True"}), NS, CONFIG)


def test_a_pod_the_webhook_would_have_refused_is_reported_with_the_reason() -> None:
    message = missed(pod({**ASKS, pods.ANN_INJECT: "yes"}), NS, CONFIG)
    assert message is not None
    assert "would refuse the pod: refreshbus.io/inject: 'yes' is not \"true\" or \"false\"" in message


@pytest.mark.parametrize(
    ("the_pod", "namespace"),
    [
        (pod({pods.ANN_CONFIGMAPS: "web-config"}), NS),  # did not ask
        (pod({**ASKS, pods.ANN_INJECT: "false"}), NS),
        (pod(ASKS, sidecar=True), NS),  # has it
        (pod({**ASKS, pods.ANN_INJECTED: "true"}), NS),
        (pod(ASKS), Namespace("kube-system")),  # never injected there
        (pod(ASKS), Namespace("apps", {"refreshbus.io/injection": "disabled"})),
    ],
)
def test_pods_the_webhook_leaves_alone_are_not_reported(
    the_pod: dict[str, Any], namespace: Namespace
) -> None:
    assert missed(the_pod, namespace, CONFIG) is None
