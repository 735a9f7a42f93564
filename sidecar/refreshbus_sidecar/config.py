"""The sidecar's settings: one frozen dataclass, built once from the environment.

This is the only module that reads ``os.environ`` (the injector sets the variables named
in :mod:`refreshbus_wire.pods`). Secrets -- broker credentials -- come from mounted
files (``REFRESHBUS_BROKER_URLS_FILE``) and are never logged: ``repr`` masks them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from refreshbus_wire import contract, pods
from refreshbus_wire.contract import HTTP_METHODS, SIGNALS
from refreshbus_wire.routing import WORKLOAD_KINDS, PodIdentity


class ConfigError(ValueError):
    """The sidecar's environment is incomplete or inconsistent; the text says which variable."""


@dataclass(frozen=True, slots=True)
class ReloadSettings:
    """How the app is told to reload (the pod's default; an event may override it)."""

    type: str = "none"  # "signal" | "http" | "none"
    signal: str = "SIGHUP"
    process: str | None = None  # regex over /proc/<pid>/cmdline and comm
    url: str | None = None
    method: str = "POST"
    timeout: float = 5.0
    health_url: str | None = None
    health_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the sidecar needs to know; see ``refreshbus-sidecar --help``."""

    namespace: str
    pod_name: str
    pod_uid: str | None
    app: str
    workload_kind: str
    workload_name: str
    configmaps: tuple[str, ...]
    secrets: tuple[str, ...]
    target_dir: Path
    reload: ReloadSettings
    broker_urls: tuple[str, ...] = field(repr=False)
    kubeconfig: Path | None = None
    broker_ca_file: Path | None = None
    health_bind: str = "0.0.0.0"
    health_port: int = pods.DEFAULT_HEALTH_PORT
    log_level: str = "INFO"
    fetch_jitter: float = 0.3
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    heartbeat: int = 30
    resync_interval: float = 300.0
    secret_mode: int = 0o440
    configmap_mode: int = 0o644
    watch_dirs: tuple[Path, ...] = ()
    #: (kind, name, key) of every key kept as an in-place file for a subPath file mount.
    inplace_files: tuple[tuple[str, str, str], ...] = ()
    #: The pod's projected ack-identity token (None: acks go without one, protocol 1.1).
    ack_token_file: Path | None = None

    @property
    def identity(self) -> PodIdentity:
        return PodIdentity(
            namespace=self.namespace,
            pod=self.pod_name,
            workload_kind=self.workload_kind,
            workload_name=self.workload_name,
        )

    @property
    def sources(self) -> tuple[tuple[str, str], ...]:
        """(kind, name) of every managed source, ConfigMaps first."""
        return tuple(("ConfigMap", n) for n in self.configmaps) + tuple(("Secret", n) for n in self.secrets)


def load(environ: Mapping[str, str] | None = None, *, watch_mode: bool = False) -> Settings:
    """Build :class:`Settings` from the environment (``os.environ`` by default).

    Raises:
        ConfigError: a required variable is missing or a value is malformed.
    """
    env = os.environ if environ is None else environ

    def get(name: str, default: str | None = None) -> str | None:
        value = env.get(name)
        return value.strip() if value is not None and value.strip() != "" else default

    def need(name: str) -> str:
        value = get(name)
        if value is None:
            raise ConfigError(f"{name} is required")
        return value

    def number(name: str, default: float, low: float, high: float) -> float:
        raw = get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be within [{low}, {high}], got {raw!r}")
        return value

    def mode(name: str, default: int) -> int:
        raw = get(name)
        if raw is None:
            return default
        try:
            value = int(raw, 8)
        except ValueError:
            raise ConfigError(f"{name} must be an octal file mode such as 0440, got {raw!r}") from None
        if not 0 <= value <= 0o777:
            raise ConfigError(f"{name} must be within 0000..0777, got {raw!r}")
        return value

    if watch_mode:
        namespace = get(pods.ENV_NAMESPACE, "default") or "default"
        pod_name = get(pods.ENV_POD_NAME, "local") or "local"
    else:
        namespace = need(pods.ENV_NAMESPACE)
        pod_name = need(pods.ENV_POD_NAME)
    for var, value in ((pods.ENV_NAMESPACE, namespace), (pods.ENV_POD_NAME, pod_name)):
        if not contract.is_name(value):
            raise ConfigError(f"{var} {value!r} is not a valid Kubernetes name")

    workload_kind = get(pods.ENV_WORKLOAD_KIND, "Pod") or "Pod"
    if workload_kind not in WORKLOAD_KINDS:
        raise ConfigError(f"{pods.ENV_WORKLOAD_KIND} must be one of {', '.join(WORKLOAD_KINDS)}")
    workload_name = get(pods.ENV_WORKLOAD_NAME, pod_name) or pod_name

    try:
        configmaps = contract.parse_names(get(pods.ENV_CONFIGMAPS), pods.ENV_CONFIGMAPS)
        secrets = contract.parse_names(get(pods.ENV_SECRETS), pods.ENV_SECRETS)
    except contract.ContractError as exc:
        raise ConfigError(str(exc)) from None
    if not watch_mode and not configmaps and not secrets:
        raise ConfigError(f"set {pods.ENV_CONFIGMAPS} and/or {pods.ENV_SECRETS}: nothing to manage")

    broker_urls: tuple[str, ...] = ()
    if not watch_mode:
        raw_urls = get(pods.ENV_BROKER_URLS)
        urls_file = get(pods.ENV_BROKER_URLS_FILE)
        if urls_file is not None:
            try:
                raw_urls = Path(urls_file).read_text()
            except OSError as exc:
                raise ConfigError(
                    f"{pods.ENV_BROKER_URLS_FILE}: cannot read {urls_file}: {exc.strerror}") from None
        try:
            broker_urls = contract.parse_broker_urls(raw_urls or "")
        except contract.ContractError as exc:
            raise ConfigError(str(exc)) from None
        if not broker_urls:
            raise ConfigError(f"set {pods.ENV_BROKER_URLS} or {pods.ENV_BROKER_URLS_FILE}")

    reload = _reload_settings(get, number)
    inplace_files = _inplace_files(get(pods.ENV_INPLACE_FILES), configmaps, secrets)

    kubeconfig = get(pods.ENV_KUBECONFIG)
    watch_dirs = tuple(Path(d) for d in pods.split_names(get(pods.ENV_WATCH_DIRS)))
    health_port = int(number(pods.ENV_HEALTH_PORT, pods.DEFAULT_HEALTH_PORT, 0, 65535))
    level = (get(pods.ENV_LOG_LEVEL, "INFO") or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{pods.ENV_LOG_LEVEL} must be DEBUG, INFO, WARNING or ERROR")
    initial = number(pods.ENV_RECONNECT_INITIAL, 0.5, 0.01, 600)
    return Settings(
        namespace=namespace,
        pod_name=pod_name,
        pod_uid=get(pods.ENV_POD_UID),
        app=get(pods.ENV_APP, workload_name) or workload_name,
        workload_kind=workload_kind,
        workload_name=workload_name,
        configmaps=configmaps,
        secrets=secrets,
        target_dir=Path(get(pods.ENV_TARGET_DIR, pods.DEFAULT_TARGET_DIR) or pods.DEFAULT_TARGET_DIR),
        reload=reload,
        broker_urls=broker_urls,
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        broker_ca_file=Path(ca) if (ca := get(pods.ENV_BROKER_CA_FILE)) else None,
        health_bind=get(pods.ENV_HEALTH_BIND, "0.0.0.0") or "0.0.0.0",
        health_port=health_port,
        log_level=level,
        fetch_jitter=number(pods.ENV_FETCH_JITTER, 0.3, 0, 30),
        reconnect_initial=initial,
        reconnect_max=max(initial, number(pods.ENV_RECONNECT_MAX, 30.0, 0.01, 3600)),
        heartbeat=int(number(pods.ENV_HEARTBEAT, 30, 0, 3600)),
        resync_interval=number(pods.ENV_RESYNC_INTERVAL, 300.0, 0, 86400),
        secret_mode=mode(pods.ENV_SECRET_MODE, 0o440),
        configmap_mode=mode(pods.ENV_CONFIGMAP_MODE, 0o644),
        watch_dirs=watch_dirs,
        inplace_files=inplace_files,
        ack_token_file=Path(token) if (token := get(pods.ENV_ACK_TOKEN_FILE)) else None,
    )


def _inplace_files(
    raw: str | None, configmaps: tuple[str, ...], secrets: tuple[str, ...]
) -> tuple[tuple[str, str, str], ...]:
    """Parse ``<source dir>/<key>`` entries; each must name a managed source and a valid key."""
    dirs = {pods.source_dir_name("ConfigMap", n): ("ConfigMap", n) for n in configmaps}
    dirs.update({pods.source_dir_name("Secret", n): ("Secret", n) for n in secrets})
    result: list[tuple[str, str, str]] = []
    for entry in pods.split_names(raw):
        dirname, _, key = entry.partition("/")
        if dirname not in dirs or not contract.is_key(key):
            raise ConfigError(
                f"{pods.ENV_INPLACE_FILES}: {entry!r} is not <source dir>/<key> of a managed source "
                f"(one of {', '.join(sorted(dirs)) or 'none'})")
        result.append((*dirs[dirname], key))
    return tuple(result)


def _reload_settings(
    get_: Callable[[str], str | None], number_: Callable[[str, float, float, float], float]
) -> ReloadSettings:
    action = (get_(pods.ENV_ACTION) or "").lower()
    signal_name = (get_(pods.ENV_SIGNAL) or "").upper() or None
    url = get_(pods.ENV_RELOAD_URL)
    if not action:  # infer from what is set, as the annotations do
        action = "http" if url else "signal" if signal_name else "none"
    if action not in {"signal", "http", "none"}:
        raise ConfigError(f"{pods.ENV_ACTION} must be signal, http or none, got {action!r}")
    signal_name = signal_name or "SIGHUP"
    if signal_name not in SIGNALS:
        raise ConfigError(f"{pods.ENV_SIGNAL} must be one of {', '.join(sorted(SIGNALS))}")
    process = get_(pods.ENV_PROCESS)
    if process is not None:
        try:
            re.compile(process)
        except re.error as exc:
            raise ConfigError(f"{pods.ENV_PROCESS} is not a valid regular expression: {exc}") from None
    if action == "signal" and process is None:
        raise ConfigError(
            f"{pods.ENV_ACTION}=signal needs {pods.ENV_PROCESS} (a regex matching the app's command line)")
    if action == "http" and not url:
        raise ConfigError(f"{pods.ENV_ACTION}=http needs {pods.ENV_RELOAD_URL}")
    for var, value in ((pods.ENV_RELOAD_URL, url), (pods.ENV_HEALTH_URL, get_(pods.ENV_HEALTH_URL))):
        if value is not None and (problem := contract.http_url_problem(value)):
            raise ConfigError(f"{var} {problem}")
    method = (get_(pods.ENV_RELOAD_METHOD) or "POST").upper()
    if method not in HTTP_METHODS:
        raise ConfigError(f"{pods.ENV_RELOAD_METHOD} must be one of {', '.join(sorted(HTTP_METHODS))}")
    return ReloadSettings(
        type=action,
        signal=signal_name,
        process=process,
        url=url,
        method=method,
        timeout=number_(pods.ENV_RELOAD_TIMEOUT, 5.0, 0.05, 300),
        health_url=get_(pods.ENV_HEALTH_URL),
        health_timeout=number_(pods.ENV_HEALTH_TIMEOUT, 10.0, 0.05, 600),
    )
