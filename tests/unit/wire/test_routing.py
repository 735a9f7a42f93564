"""Routing keys are the targeting mechanism: a sidecar's bindings must include exactly
the keys that address it, and no key built for another pod may equal one of them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from refreshbus_wire import routing
from refreshbus_wire.pods import source_dir_name, split_names
from refreshbus_wire.routing import PodIdentity

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
subdomains = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,14}[a-z0-9])?", fullmatch=True)
identities = st.builds(
    PodIdentity, labels, subdomains, st.sampled_from(["Deployment", "StatefulSet"]), subdomains
)


def test_a_sidecar_binds_its_pod_workload_namespace_and_broadcast_keys() -> None:
    me = PodIdentity("shop", "orders-7d9f-abc", "Deployment", "orders")
    assert routing.sidecar_bindings(me) == (
        "refresh.pod.shop.orders-7d9f-abc",
        "refresh.workload.shop.deployment.orders",
        "refresh.namespace.shop",
        "refresh.all",
    )
    first, second = routing.new_sidecar_queue(me), routing.new_sidecar_queue(me)
    assert first.startswith("refreshbus.sidecar.shop.orders-7d9f-abc.")
    assert first != second  # unguessable: nobody can declare a pod's queue before it does


def test_a_sidecar_queue_name_fits_amqp_even_for_the_longest_pod_name() -> None:
    me = PodIdentity("n" * 63, "p" * 253, "Pod", "p" * 253)
    name = routing.new_sidecar_queue(me)
    assert len(name.encode()) <= 255
    assert name.startswith(routing.SIDECAR_QUEUE_PREFIX)


@given(identities, identities)
def test_keys_of_two_different_pods_never_collide(a: PodIdentity, b: PodIdentity) -> None:
    if (a.namespace, a.pod) != (b.namespace, b.pod):
        assert routing.pod_key(a.namespace, a.pod) not in routing.sidecar_bindings(b)
    if (a.namespace, a.workload_kind, a.workload_name) != (b.namespace, b.workload_kind, b.workload_name):
        assert routing.workload_key(
            a.namespace, a.workload_kind, a.workload_name
        ) not in routing.sidecar_bindings(b)
    if a.namespace != b.namespace:
        assert routing.namespace_key(a.namespace) not in routing.sidecar_bindings(b)


def test_acks_are_routed_to_the_operator_binding() -> None:
    assert routing.ack_key("shop", "orders-1").startswith("ack.")
    assert routing.ACK_BINDING == "ack.#"


def test_source_directories_keep_configmaps_and_secrets_apart() -> None:
    assert source_dir_name("ConfigMap", "app") != source_dir_name("Secret", "app")


def test_names_lists_drop_blanks_and_duplicates_but_keep_order() -> None:
    assert split_names(" b, a,,b ,c ") == ("b", "a", "c")
    assert split_names(None) == ()
