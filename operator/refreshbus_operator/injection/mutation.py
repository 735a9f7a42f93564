"""The sidecar injection itself: a pure function from a Pod (as the API server sends it
in an AdmissionReview) to JSONPatch operations, or a rejection with a reason.

No kopf, no Kubernetes client, no I/O: everything the decision needs comes in as
arguments (the pod, its namespace's name and labels, the injector's config), so every
rule is unit-tested. The one check that needs the API -- do the named ConfigMaps/Secrets
exist? -- is left to the caller: :attr:`Decision.sources` says what to look up.

Rules (docs/injection.md has the user-facing version):

* opt-in: annotation ``refreshbus.io/inject: "true"`` (or the same label, which lets a
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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from refreshbus_wire import pods
from refreshbus_wire.events import HTTP_METHODS, SIGNALS

from refreshbus_operator.injection.config import (
    NAMESPACE_LABEL,
    NAMESPACE_OPT_IN,
    NAMESPACE_OPT_OUT,
    InjectionConfig,
)

#: A ConfigMap/Secret key (what a subPath of a whole-object volume names).
_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
#: The shared (emptyDir) volume the sidecar writes and the app reads.
SHARED_VOLUME = "refreshbus-config"
#: The broker URLs Secret, mounted into the sidecar only.
BROKER_VOLUME = "refreshbus-broker"
BROKER_MOUNT = "/etc/refreshbus/broker"
#: The sidecar's own service-account token volume (independent of automountServiceAccountToken).
TOKEN_VOLUME = "refreshbus-api-access"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Pod Security Admission label naming the enforced level.
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
HEALTH_PORT_NAME = "rb-health"
INJECTED_VALUE = "true"

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True, slots=True)
class Namespace:
    """What the decision needs to know about the pod's namespace."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


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


# -- opt-in ------------------------------------------------------------------------------


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(pod).get("annotations") or {}


def wants_injection(pod: Mapping[str, Any]) -> bool:
    """The pod asks for the sidecar (annotation, or the label of the same name)."""
    labels = _meta(pod).get("labels") or {}
    value = _annotations(pod).get(pods.ANN_INJECT) or labels.get(pods.ANN_INJECT) or ""
    return value.strip().lower() in _TRUE


def already_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (*(spec.get("containers") or ()), *(spec.get("initContainers") or ()))}
    return pods.SIDECAR_CONTAINER in names or pods.ANN_INJECTED in _annotations(pod)


# -- annotations -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """The validated annotations of one pod."""

    configmaps: tuple[str, ...]
    secrets: tuple[str, ...]
    action: str  # signal | http | none
    signal: str | None = None
    process: str | None = None
    reload_url: str | None = None
    reload_method: str | None = None
    health_url: str | None = None
    app: str | None = None

    @property
    def sources(self) -> tuple[tuple[str, str], ...]:
        return (*(("ConfigMap", n) for n in self.configmaps), *(("Secret", n) for n in self.secrets))


def _url_problem(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"}:
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        return "has an invalid port"
    return None


def parse_options(annotations: Mapping[str, str]) -> Options | str:
    """Validated options, or the reason they are unusable (a rejection message)."""
    a = {k: (v or "").strip() for k, v in annotations.items()}
    configmaps = pods.split_names(a.get(pods.ANN_CONFIGMAPS))
    secrets = pods.split_names(a.get(pods.ANN_SECRETS))
    if not configmaps and not secrets:
        return (
            f"{pods.ANN_INJECT} is set but neither {pods.ANN_CONFIGMAPS} nor {pods.ANN_SECRETS} "
            "names a ConfigMap or Secret to manage"
        )
    for ann, names in ((pods.ANN_CONFIGMAPS, configmaps), (pods.ANN_SECRETS, secrets)):
        for name in names:
            if not _NAME_RE.match(name):
                return f"{ann}: {name!r} is not a valid object name"
    signal = a.get(pods.ANN_SIGNAL) or None
    url = a.get(pods.ANN_RELOAD_URL) or None
    process = a.get(pods.ANN_PROCESS) or None
    method = a.get(pods.ANN_RELOAD_METHOD) or None
    health = a.get(pods.ANN_HEALTH_URL) or None
    if signal and url:
        return (
            f"{pods.ANN_SIGNAL} and {pods.ANN_RELOAD_URL} are both set: choose one reload action "
            "(a signal to the app's process, or an HTTP call)"
        )
    if signal:
        signal = signal.upper()
        if not signal.startswith("SIG"):
            signal = "SIG" + signal
        if signal not in SIGNALS:
            return (
                f"{pods.ANN_SIGNAL}: unknown signal {a[pods.ANN_SIGNAL]!r}; "
                f"use one of {', '.join(sorted(SIGNALS))}"
            )
        if not process:
            return (
                f"{pods.ANN_SIGNAL} needs {pods.ANN_PROCESS}: a regular expression matching the "
                "app's command line, so the sidecar knows which process to signal"
            )
    if process:
        try:
            re.compile(process)
        except re.error as exc:
            return f"{pods.ANN_PROCESS}: {process!r} is not a valid regular expression ({exc})"
    if url and (problem := _url_problem(url)):
        return f"{pods.ANN_RELOAD_URL}: {url!r} {problem}"
    if method:
        if not url:
            return f"{pods.ANN_RELOAD_METHOD} is set without {pods.ANN_RELOAD_URL}"
        method = method.upper()
        if method not in HTTP_METHODS:
            return f"{pods.ANN_RELOAD_METHOD}: {method!r} is not one of {', '.join(sorted(HTTP_METHODS))}"
    if health and (problem := _url_problem(health)):
        return f"{pods.ANN_HEALTH_URL}: {health!r} {problem}"
    auto = a.get(pods.ANN_AUTO_REFRESH)
    if auto and auto.lower() not in _TRUE | _FALSE:
        return f'{pods.ANN_AUTO_REFRESH}: {auto!r} is not "true" or "false"'
    action = "signal" if signal else "http" if url else "none"
    return Options(
        configmaps=configmaps,
        secrets=secrets,
        action=action,
        signal=signal,
        process=process,
        reload_url=url,
        reload_method=method,
        health_url=health,
        app=a.get(pods.ANN_APP) or None,
    )


# -- identity ----------------------------------------------------------------------------


def workload_of(pod: Mapping[str, Any]) -> tuple[str, str | None]:
    """(kind, name) of the workload that owns the pod, from its controller ownerReference.

    A ReplicaSet whose name ends in ``-<pod-template-hash>`` belongs to a Deployment of
    the name without that suffix. A pod without a known owner is its own workload; its
    name is ``None`` because at admission it may only have a generateName (the sidecar
    then gets it from the Downward API).
    """
    meta = _meta(pod)
    refs = meta.get("ownerReferences") or []
    owner = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if owner is None:
        return "Pod", None
    kind, name = owner.get("kind", ""), owner.get("name", "")
    if kind == "ReplicaSet":
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if template_hash and name.endswith("-" + template_hash):
            return "Deployment", name[: -len(template_hash) - 1]
        return "ReplicaSet", name
    if kind in {"StatefulSet", "DaemonSet"}:
        return kind, name
    return "Pod", None


# -- security ----------------------------------------------------------------------------


def _uid_of(container: Mapping[str, Any], pod_sc: Mapping[str, Any], key: str) -> int | None:
    value = (container.get("securityContext") or {}).get(key)
    return value if value is not None else pod_sc.get(key)


def security(
    pod: Mapping[str, Any], options: Options, namespace: Namespace, config: InjectionConfig
) -> tuple[dict[str, Any], bool, list[str]] | str:
    """(sidecar securityContext, shares the app's UID, warnings) or a rejection message."""
    spec = pod.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    containers = spec.get("containers") or []
    uids = {_uid_of(c, pod_sc, "runAsUser") for c in containers}
    gids = {_uid_of(c, pod_sc, "runAsGroup") for c in containers}
    sc: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if len(uids) == 1 and None not in uids:
        uid = next(iter(uids))
        assert uid is not None
        sc["runAsUser"] = uid
        if len(gids) == 1 and None not in gids:
            sc["runAsGroup"] = next(iter(gids))
        if uid != 0:
            sc["runAsNonRoot"] = True
        return sc, True, []
    if options.action != "signal":
        sc["runAsUser"] = config.default_uid
        sc["runAsNonRoot"] = True
        return sc, False, []
    # Signalling a process of unknown (or several) UIDs: root with CAP_KILL and nothing else.
    why = (
        "the app containers run as different users"
        if len(uids - {None}) > 1
        else "the app's user is not set (no securityContext.runAsUser)"
    )
    fix = (
        "set securityContext.runAsUser on the app container (or the pod) so the sidecar can run "
        "as the same user, or use refreshbus.io/reload-url instead of a signal"
    )
    if pod_sc.get("runAsNonRoot") or any(
        (c.get("securityContext") or {}).get("runAsNonRoot") for c in containers
    ):
        return (
            f"{pods.ANN_SIGNAL}: to signal the app the sidecar needs the app's UID or CAP_KILL as "
            f"root; {why} and the pod requires runAsNonRoot, which forbids the root+CAP_KILL "
            f"fallback: {fix}"
        )
    level = (namespace.labels or {}).get(PSA_ENFORCE)
    if level == "restricted":
        return (
            f"{pods.ANN_SIGNAL}: to signal the app the sidecar needs the app's UID or CAP_KILL; "
            f'{why} and namespace {namespace.name} enforces Pod Security "restricted", which '
            f"forbids adding CAP_KILL: {fix}"
        )
    sc["runAsUser"] = 0
    sc["runAsNonRoot"] = False
    sc["capabilities"] = {"drop": ["ALL"], "add": ["KILL"]}
    return (
        sc,
        False,
        [
            f"refreshbus: {why}; the sidecar runs as root with only CAP_KILL to signal it "
            "(set runAsUser to run it as the app's user instead)"
        ],
    )


# -- volumes -----------------------------------------------------------------------------


def _volume_source(volume: Mapping[str, Any]) -> tuple[str, str, bool] | str | None:
    """(kind, name, has items) of a ConfigMap/Secret volume; a str for a projected volume
    that cannot be replaced (the reason); None for anything else."""
    if cm := volume.get("configMap"):
        return "ConfigMap", cm.get("name", ""), bool(cm.get("items"))
    if secret := volume.get("secret"):
        return "Secret", secret.get("secretName", ""), bool(secret.get("items"))
    if projected := volume.get("projected"):
        sources = projected.get("sources") or []
        found = [
            ("ConfigMap", s["configMap"]) if "configMap" in s else ("Secret", s["secret"])
            for s in sources
            if "configMap" in s or "secret" in s
        ]
        if len(sources) == 1 and found:
            kind, src = found[0]
            return kind, src.get("name", ""), bool(src.get("items"))
        if found:
            return "combines several sources"
    return None


def _sidecar(
    pod: Mapping[str, Any], options: Options, config: InjectionConfig, sc: Mapping[str, Any], same_uid: bool,
    inplace: Sequence[str] = (),
) -> dict[str, Any]:
    kind, name = workload_of(pod)

    def field_env(var: str, path: str) -> dict[str, Any]:
        return {"name": var, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    env: list[dict[str, Any]] = [
        field_env(pods.ENV_NAMESPACE, "metadata.namespace"),
        field_env(pods.ENV_POD_NAME, "metadata.name"),
        field_env(pods.ENV_POD_UID, "metadata.uid"),
        {"name": pods.ENV_WORKLOAD_KIND, "value": kind},
        {"name": pods.ENV_WORKLOAD_NAME, "value": name}
        if name
        else field_env(pods.ENV_WORKLOAD_NAME, "metadata.name"),
    ]
    if options.app:
        env.append({"name": pods.ENV_APP, "value": options.app})

    def add(var: str, value: str | None) -> None:
        if value:
            env.append({"name": var, "value": value})

    add(pods.ENV_CONFIGMAPS, ",".join(options.configmaps))
    add(pods.ENV_SECRETS, ",".join(options.secrets))
    add(pods.ENV_TARGET_DIR, pods.DEFAULT_TARGET_DIR)
    add(pods.ENV_INPLACE_FILES, ",".join(inplace))
    add(pods.ENV_ACTION, options.action)
    add(pods.ENV_SIGNAL, options.signal)
    add(pods.ENV_PROCESS, options.process)
    add(pods.ENV_RELOAD_URL, options.reload_url)
    add(pods.ENV_RELOAD_METHOD, options.reload_method)
    add(pods.ENV_HEALTH_URL, options.health_url)
    add(pods.ENV_BROKER_URLS_FILE, f"{BROKER_MOUNT}/{config.broker_secret_key}")
    add(pods.ENV_HEALTH_PORT, str(config.health_port))
    add(pods.ENV_LOG_LEVEL, config.log_level)
    if not same_uid and options.secrets:
        # Another user (the app) must read the files, as with kubelet's default 0644.
        add(pods.ENV_SECRET_MODE, "0444")
    limits = {"memory": config.memory_limit}
    if config.cpu_limit:
        limits["cpu"] = config.cpu_limit

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": HEALTH_PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "name": pods.SIDECAR_CONTAINER,
        "image": config.sidecar_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["run"],
        "restartPolicy": "Always",
        "env": env,
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": config.health_port, "protocol": "TCP"}],
        # Native sidecar: the app containers start only once this passes (initial config written).
        "startupProbe": probe("/readyz", 1, 300),
        "livenessProbe": probe("/livez", 10, 3),
        "resources": {
            "requests": {"cpu": config.cpu_request, "memory": config.memory_request},
            "limits": limits,
        },
        "securityContext": dict(sc),
        "volumeMounts": [
            {"name": SHARED_VOLUME, "mountPath": pods.DEFAULT_TARGET_DIR},
            {"name": BROKER_VOLUME, "mountPath": BROKER_MOUNT, "readOnly": True},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
        ],
    }


def _new_volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    return [
        # tmpfs: Secret content never touches the node's disk, as with kubelet's secret volumes.
        {"name": SHARED_VOLUME, "emptyDir": {"medium": "Memory"}},
        {
            "name": BROKER_VOLUME,
            "secret": {
                "secretName": config.broker_secret,
                "defaultMode": 0o444,
                "items": [{"key": config.broker_secret_key, "path": config.broker_secret_key}],
            },
        },
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ],
            },
        },
    ]


def _rewrite_mounts(
    spec: dict[str, Any], managed: set[tuple[str, str]]
) -> tuple[set[str], list[str], list[str]]:
    """Point app mounts of managed volumes at the shared volume, in place. Returns the
    names of volumes no container uses any more, warnings, and the in-place file entries
    (``<source dir>/<key>``) the sidecar must keep for subPath file mounts."""
    warnings: list[str] = []
    replaceable: dict[str, str] = {}
    replaceable_sources: dict[str, tuple[str, str]] = {}
    inplace: dict[str, None] = {}
    for volume in spec.get("volumes") or []:
        source = _volume_source(volume)
        if isinstance(source, str):
            warnings.append(
                f"refreshbus: projected volume {volume['name']!r} {source}; it stays "
                "kubelet-managed (refreshed files are under /refreshbus in the sidecar only)"
            )
        elif source is not None and (source[0], source[1]) in managed:
            kind, name, has_items = source
            if has_items:
                warnings.append(
                    f"refreshbus: volume {volume['name']!r} remaps keys with items; it stays "
                    "kubelet-managed and is not refreshed in place"
                )
            else:
                replaceable[volume["name"]] = pods.source_dir_name(kind, name)
                replaceable_sources[volume["name"]] = (kind, name)
    still_used: set[str] = set()
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            mounts = container.get("volumeMounts") or []
            extra: list[dict[str, Any]] = []
            for i, mount in enumerate(mounts):
                dir_name = replaceable.get(mount.get("name", ""))
                if dir_name is None:
                    still_used.add(mount.get("name", ""))
                    continue
                key = mount.get("subPath") or ""
                if key and not mount.get("subPathExpr") and _KEY_RE.match(key) and not key.startswith(".."):
                    # A file bind mount pins one inode: mount the sidecar's in-place copy of the key.
                    kind, name = replaceable_sources[mount["name"]]
                    mounts[i] = {
                        "name": SHARED_VOLUME,
                        "mountPath": mount["mountPath"],
                        "subPath": pods.inplace_path(kind, name, key),
                        "readOnly": True,
                    }
                    inplace.setdefault(pods.inplace_entry(kind, name, key), None)
                    continue
                if mount.get("subPath") or mount.get("subPathExpr"):
                    still_used.add(mount["name"])
                    alt = f"{pods.DEFAULT_TARGET_DIR}/{dir_name}"
                    warnings.append(
                        f"refreshbus: {container['name']}: {mount['mountPath']} mounts a nested path or uses "
                        f"subPathExpr, which cannot be kept up to date; it keeps its start-up content. The "
                        f"refreshed files "
                        f"are at {alt} in the same container"
                    )
                    if not any(m.get("mountPath") == alt for m in (*mounts, *extra)):
                        extra.append(
                            {"name": SHARED_VOLUME, "mountPath": alt, "subPath": dir_name, "readOnly": True}
                        )
                    continue
                mounts[i] = {
                    "name": SHARED_VOLUME,
                    "mountPath": mount["mountPath"],
                    "subPath": dir_name,
                    "readOnly": True,
                }
            if extra:
                container["volumeMounts"] = [*mounts, *extra]
    unused = set(replaceable) - still_used
    return unused, warnings, list(inplace)


# -- the decision ------------------------------------------------------------------------


def decide(pod: Mapping[str, Any], namespace: Namespace, config: InjectionConfig) -> Decision:
    """What to do with a Pod being created in ``namespace``."""
    if not wants_injection(pod):
        return skip("not opted in")
    if namespace.name in config.excluded():
        return skip(f"namespace {namespace.name} is excluded from injection")
    if (namespace.labels or {}).get(NAMESPACE_LABEL) == NAMESPACE_OPT_OUT:
        return skip(f"namespace {namespace.name} is labelled {NAMESPACE_LABEL}={NAMESPACE_OPT_OUT}")
    if config.namespace_opt_in and (namespace.labels or {}).get(NAMESPACE_LABEL) != NAMESPACE_OPT_IN:
        return skip(f"namespace {namespace.name} is not labelled {NAMESPACE_LABEL}={NAMESPACE_OPT_IN}")
    if already_injected(pod):
        return skip("already injected")
    options = parse_options(_annotations(pod))
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
    unused, mount_warnings, inplace = _rewrite_mounts(spec, set(options.sources))
    warnings.extend(mount_warnings)
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in unused]
    spec["volumes"] = [*volumes, *_new_volumes(config)]
    spec["initContainers"] = [
        _sidecar(pod, options, config, sc, same_uid, inplace),
        *(spec.get("initContainers") or []),
    ]
    annotations = {**_annotations(pod), pods.ANN_INJECTED: INJECTED_VALUE}

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
