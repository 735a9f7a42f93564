"""Spring Cloud Bus destination semantics, checked against the worked examples that were
verified on the real Java classes (shared/reference/spring-cloud-bus.md, section 3.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from refreshbus_wire.destination import ant_match, app_name, expand, instance_id, matches


@pytest.mark.parametrize(
    ("destination", "on_the_wire", "receiver", "expected"),
    [
        (None, "**", "customers:8080:abc123", True),
        ("customers", "customers:**", "customers:8080:abc123", True),
        ("customers:8080", "customers:8080:**", "customers:8080:abc123", True),
        ("customers:9000", "customers:9000:**", "customers:8080:abc123", False),
        ("customers:8080:abc123", "customers:8080:abc123", "customers:8080:abc123", True),
        ("customers:*", "customers:*:**", "customers:8080:abc123", True),
        ("customers:8080:*", "customers:8080:*", "customers:8080:abc123", True),
        ("cust*", "cust*:**", "customers:8080:abc123", True),
        ("*", "*:**", "customers:8080:abc123", True),
        ("Customers", "Customers:**", "customers:8080:abc123", False),
        ("customers-api", "customers-api:**", "customers:8080:abc123", False),
        ("customers", "customers:**", "customers-api:8080:abc123", False),
        ("customers*", "customers*:**", "customers-api:8080:abc123", True),
        ("customers:dev", "customers:dev:**", "customers:dev:8080:abc123", True),
        ("customers:dev", "customers:dev:**", "customers:8080:abc123", False),
        ("customers:8080", "customers:8080:**", "customers:dev:8080:abc123", False),
        ("customers:*:8080", "customers:*:8080", "customers:dev:8080:abc123", False),
        ("customers:**:8080:*", "customers:**:8080:*", "customers:dev:8080:abc123", True),
        ("customers:**:abc123", "customers:**:abc123", "customers:dev:8080:abc123", True),
        ("customers-dev", "customers-dev:**", "customers:dev:8080:abc123", False),
    ],
)
def test_spring_reference_examples(
    destination: str | None, on_the_wire: str, receiver: str, expected: bool
) -> None:
    assert expand(destination) == on_the_wire
    assert matches(destination, receiver) is expected


@pytest.mark.parametrize(
    ("destination", "expected_pods"),
    [
        ("orders", {"orders-7d9f-a", "orders-7d9f-b", "orders-5c4e-c"}),
        ("orders:**", {"orders-7d9f-a", "orders-7d9f-b", "orders-5c4e-c"}),
        ("orders:orders-7d9f*", {"orders-7d9f-a", "orders-7d9f-b"}),
        ("orders:orders-7d9f-?", {"orders-7d9f-a", "orders-7d9f-b"}),
        ("orders:orders-5c4e-c", {"orders-5c4e-c"}),
        ("**", {"orders-7d9f-a", "orders-7d9f-b", "orders-5c4e-c", "billing-1"}),
        ("*:billing-1", {"billing-1"}),
        ("ord*", {"orders-7d9f-a", "orders-7d9f-b", "orders-5c4e-c"}),
        ("Orders", set()),
    ],
)
def test_refreshbus_instance_ids_follow_the_same_rules(destination: str, expected_pods: set[str]) -> None:
    pods = {
        "orders-7d9f-a": "orders",
        "orders-7d9f-b": "orders",
        "orders-5c4e-c": "orders",
        "billing-1": "billing",
    }
    selected = {pod for pod, app in pods.items() if matches(destination, instance_id(app, pod))}
    assert selected == expected_pods


def test_blank_destination_is_a_broadcast_like_spring() -> None:
    assert matches("", "anything:at-all")
    assert matches("  ", "anything:at-all")


def test_app_name_prefers_the_recommended_label_then_app_then_workload() -> None:
    assert app_name({"app.kubernetes.io/name": "orders", "app": "x"}, "orders-deploy", "p") == "orders"
    assert app_name({"app": "legacy"}, "orders-deploy", "p") == "legacy"
    assert app_name({}, "orders-deploy", "p") == "orders-deploy"
    assert app_name({}, None, "lonely-pod") == "lonely-pod"
    assert app_name({"app": "legacy"}, "d", "p", {"refreshbus.io/app": "chosen"}) == "chosen"


segments = st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True)


@given(st.lists(segments, min_size=1, max_size=5))
def test_double_star_matches_every_id_and_an_id_matches_itself(parts: list[str]) -> None:
    path = ":".join(parts)
    assert ant_match("**", path)
    assert ant_match(path, path)
    assert ant_match(parts[0] + ":**", path)


@given(st.lists(segments, min_size=2, max_size=5), segments)
def test_a_different_first_segment_never_matches(parts: list[str], other: str) -> None:
    if other == parts[0]:
        return
    assert not ant_match(other + ":**", ":".join(parts))
