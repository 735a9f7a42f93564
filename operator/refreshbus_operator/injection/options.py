"""What a pod asks for: its opt-in and its ``refreshbus.io/*`` annotations, read with the
one contract parser (:mod:`refreshbus_wire.contract`) every other reader uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refreshbus_wire import contract, pods


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def annotations_of(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(pod).get("annotations") or {}


def opt_in(pod: Mapping[str, Any]) -> bool | str:
    """Whether the pod asks for the sidecar (annotation, or the label of the same name), or
    why its value is unusable: the decision refuses such a pod with the reason instead of
    letting it run without the sidecar it meant to request."""
    try:
        return contract.inject_requested(annotations_of(pod), _meta(pod).get("labels") or {})
    except contract.ContractError as exc:
        return str(exc)


def wants_injection(pod: Mapping[str, Any]) -> bool:
    """The pod asks for the sidecar, validly or not."""
    return contract.asks_for_injection(annotations_of(pod), _meta(pod).get("labels") or {})


def already_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (*(spec.get("containers") or ()), *(spec.get("initContainers") or ()))}
    return pods.SIDECAR_CONTAINER in names or pods.ANN_INJECTED in annotations_of(pod)


def parse_options(annotations: Mapping[str, str]) -> contract.PodOptions | str:
    """Validated options, or the reason they are unusable (a rejection message)."""
    try:
        return contract.parse_annotations(annotations)
    except contract.ContractError as exc:
        return str(exc)
