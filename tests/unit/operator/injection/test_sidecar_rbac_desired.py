"""The sidecar Role/RoleBinding a workload needs (pure part of sidecar_rbac)."""

from __future__ import annotations

from typing import Any

import pytest
from refreshbus_operator.sidecar_rbac import desired, object_name
from refreshbus_wire import pods


def workload(
    annotations: dict[str, str], sa: str | None = None, kind: str = "Deployment", name: str = "web"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "x"}]}
    if sa:
        spec["serviceAccountName"] = sa
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop", "uid": "u-1"},
        "spec": {"template": {"metadata": {"annotations": annotations}, "spec": spec}},
    }


@pytest.mark.parametrize(
    "annotations",
    [
        {pods.ANN_CONFIGMAPS: "Bad_Name,ok"},  # the webhook refuses these pods: no Role
        {pods.ANN_CONFIGMAPS: "ok", pods.ANN_AUTO_REFRESH: "yes"},
        {pods.ANN_CONFIGMAPS: "ok", pods.ANN_SIGNAL: "HUP"},  # no refreshbus.io/process
        {pods.ANN_CONFIGMAPS: " , "},
    ],
)
def test_no_role_for_a_template_the_webhook_refuses(annotations: dict[str, str]) -> None:
    assert desired(workload({pods.ANN_INJECT: "true", **annotations})) is None


def test_role_names_exactly_the_annotated_objects_with_get_only() -> None:
    wanted = desired(workload({pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "a, b", pods.ANN_SECRETS: "s"}))
    assert wanted is not None
    role, binding = wanted
    assert role["metadata"]["name"] == "refreshbus-sidecar-deployment-web"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
         "resourceNames": ["a", "b", "refreshbus-release-deployment-web"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["s"]},
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": "shop"}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "refreshbus-sidecar-deployment-web",
    }
    assert role["metadata"]["ownerReferences"][0] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "uid": "u-1",
        "blockOwnerDeletion": False,
    }


def test_binding_goes_to_the_template_service_account() -> None:
    wanted = desired(
        workload({pods.ANN_INJECT: "true", pods.ANN_SECRETS: "s"}, sa="web-sa", kind="StatefulSet")
    )
    assert wanted is not None
    role, binding = wanted
    # Even without ConfigMaps, the sidecar reads its workload's release record.
    assert [(r["resources"], r["resourceNames"]) for r in role["rules"]] == [
        (["configmaps"], ["refreshbus-release-statefulset-web"]), (["secrets"], ["s"])]
    assert binding["subjects"][0]["name"] == "web-sa"
    assert role["metadata"]["name"] == "refreshbus-sidecar-statefulset-web"


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {pods.ANN_INJECT: "false", pods.ANN_CONFIGMAPS: "a"},
        {pods.ANN_INJECT: "true"},
        {pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: " , "},
    ],
)
def test_nothing_when_not_opted_in_or_nothing_named(annotations: dict[str, str]) -> None:
    assert desired(workload(annotations)) is None


def test_long_names_stay_valid() -> None:
    name = "x" * 250
    assert len(object_name("Deployment", name)) <= 253
    assert object_name("Deployment", name) != object_name("Deployment", name[:-1] + "y")
    wanted = desired(workload({pods.ANN_INJECT: "true", pods.ANN_CONFIGMAPS: "a"}, name=name))
    assert wanted is not None
    assert all(len(v) <= 63 for v in wanted[0]["metadata"]["labels"].values())
