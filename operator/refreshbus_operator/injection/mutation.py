"""The sidecar injection itself: a pure function from a Pod (as the API server sends it
in an AdmissionReview) to JSONPatch operations, or a rejection with a reason.

No kopf, no Kubernetes client, no I/O: everything the decision needs comes in as
arguments (the pod, its namespace's name and labels, the injector's config), so every
rule is unit-tested. The one check that needs the API -- do the named ConfigMaps/Secrets
exist? -- is left to the caller: :attr:`Decision.sources` says what to look up.

Rules (docs/injection.md has the user-facing version):

* opt-in: annotation ``refreshbus.io/inject: "true"`` (any case; a value that is neither
  true nor false is refused, as every boolean of the contract) (or the same label, which lets a
  webhook ``objectSelector`` narrow the calls); skipped in excluded namespaces, in
  namespaces labelled ``refreshbus.io/injection: disabled``, and on pods already injected
  (sidecar container present or ``refreshbus.io/injected`` set);
* the sidecar is a *native sidecar*: first init container, ``restartPolicy: Always``,
  startup probe on ``/readyz`` (the app starts once the initial config is written),
  liveness probe on ``/livez``;
* app containers' mounts of a managed ConfigMap/Secret volume (configMap, secret, or a
  single-source projected volume, without ``items``) are replaced by the shared volume at
  the same mountPath (``subPath: <source dir>``); a volume left unused is dropped.
  A ``subPath`` mount of one key (a file bind mount, which pins an inode and never sees
  a ``..data`` swap) becomes a subPath mount of the sidecar's in-place copy of that key
  (``.inplace/<source dir>/<key>``, rewritten in its own inode on every change; listed in
  ``REFRESHBUS_INPLACE_FILES``). Other ``subPath``/``subPathExpr`` mounts are left as
  Kubernetes made them and the source directory is additionally mounted at
  ``/refreshbus/<source dir>`` in that container; a warning says so;
* signal action: ``shareProcessNamespace: true``; the sidecar runs as the app's UID when
  the app's containers agree on one, else as root with only CAP_KILL -- rejected when the
  pod requires non-root or the namespace enforces Pod Security "restricted".
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from refreshbus_wire import pods
from refreshbus_wire.events import PROTOCOL_VERSION

from refreshbus_operator.injection.config import (
    NAMESPACE_LABEL,
    NAMESPACE_OPT_IN,
    NAMESPACE_OPT_OUT,
    InjectionConfig,
)
from refreshbus_operator.injection.container import sidecar_container
from refreshbus_operator.injection.options import already_injected, annotations_of, opt_in, parse_options
from refreshbus_operator.injection.security import Namespace, security
from refreshbus_operator.injection.volumes import new_volumes, rewrite_mounts

INJECTED_VALUE = "true"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer: allowed (with a possibly empty JSONPatch) or refused with a message."""

    allowed: bool
    patch: list[dict[str, Any]] = field(default_factory=list)
    #: Why the pod was refused, or why it was left alone (for logs).
    message: str = ""
    warnings: tuple[str, ...] = ()
    #: (kind, name) of every ConfigMap/Secret the caller must check exists before admitting.
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def injected(self) -> bool:
        return self.allowed and bool(self.patch)


def skip(reason: str) -> Decision:
    return Decision(allowed=True, message=reason)


def reject(reason: str) -> Decision:
    return Decision(allowed=False, message=reason)


def decide(pod: Mapping[str, Any], namespace: Namespace, config: InjectionConfig) -> Decision:
    """What to do with a Pod being created in ``namespace``."""
    wanted = opt_in(pod)
    if wanted is False:
        return skip("not opted in")
    if namespace.name in config.excluded():
        return skip(f"namespace {namespace.name} is excluded from injection")
    if (namespace.labels or {}).get(NAMESPACE_LABEL) == NAMESPACE_OPT_OUT:
        return skip(f"namespace {namespace.name} is labelled {NAMESPACE_LABEL}={NAMESPACE_OPT_OUT}")
    if config.namespace_opt_in and (namespace.labels or {}).get(NAMESPACE_LABEL) != NAMESPACE_OPT_IN:
        return skip(f"namespace {namespace.name} is not labelled {NAMESPACE_LABEL}={NAMESPACE_OPT_IN}")
    if already_injected(pod):
        return skip("already injected")
    if isinstance(wanted, str):
        return reject(wanted)
    options = parse_options(annotations_of(pod))
    if isinstance(options, str):
        return reject(options)
    spec = copy.deepcopy(dict(pod.get("spec") or {}))
    secured = security(pod, options, namespace, config)
    if isinstance(secured, str):
        return reject(secured)
    sc, same_uid, warnings = secured
    if options.action == "signal":
        if spec.get("shareProcessNamespace") is False:
            return reject(
                f"{pods.ANN_SIGNAL} needs shareProcessNamespace (the sidecar must see the app's "
                "process), but the pod sets shareProcessNamespace: false"
            )
        if not spec.get("hostPID"):
            spec["shareProcessNamespace"] = True
    unused, mount_warnings, inplace = rewrite_mounts(spec, set(options.sources))
    warnings.extend(mount_warnings)
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in unused]
    spec["volumes"] = [*volumes, *new_volumes(config)]
    spec["initContainers"] = [
        sidecar_container(pod, options, config, sc, same_uid, inplace),
        *(spec.get("initContainers") or []),
    ]
    # The sidecar image ships with this operator's release: it speaks this protocol. The
    # rollout refuses pods without it (an older sidecar ignores the release record).
    annotations = {**annotations_of(pod), pods.ANN_INJECTED: INJECTED_VALUE,
                   pods.ANN_SIDECAR_PROTOCOL: PROTOCOL_VERSION}

    ops: list[dict[str, Any]] = [{"op": "add", "path": "/metadata/annotations", "value": annotations}]
    original = pod.get("spec") or {}
    for key in ("shareProcessNamespace", "volumes", "initContainers", "containers"):
        if key in spec and spec[key] != original.get(key):
            ops.append({"op": "add", "path": f"/spec/{key}", "value": spec[key]})
    return Decision(
        allowed=True, patch=ops, warnings=tuple(warnings), sources=options.sources, message="injected"
    )


def apply_patch(obj: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply the ``add`` operations :func:`decide` emits (for tests and dry runs)."""
    result = copy.deepcopy(dict(obj))
    for op in ops:
        assert op["op"] == "add", op
        *parents, last = op["path"].lstrip("/").split("/")
        target = result
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = copy.deepcopy(op["value"])
    return result
