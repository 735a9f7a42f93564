"""What a pod asks for: its opt-in and its validated ``refreshbus.io/*`` annotations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from refreshbus_wire import pods
from refreshbus_wire.events import HTTP_METHODS, SIGNALS

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def annotations_of(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(pod).get("annotations") or {}


def wants_injection(pod: Mapping[str, Any]) -> bool:
    """The pod asks for the sidecar (annotation, or the label of the same name)."""
    labels = _meta(pod).get("labels") or {}
    value = annotations_of(pod).get(pods.ANN_INJECT) or labels.get(pods.ANN_INJECT) or ""
    return value.strip().lower() in _TRUE


def already_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (*(spec.get("containers") or ()), *(spec.get("initContainers") or ()))}
    return pods.SIDECAR_CONTAINER in names or pods.ANN_INJECTED in annotations_of(pod)


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
