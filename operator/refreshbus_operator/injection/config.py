"""Settings of the sidecar injector (webhook server, TLS, the injected container).

Every field has an environment variable ``REFRESHBUS_INJECTION_<FIELD>`` (the Helm chart
sets them). Kept apart from :mod:`refreshbus_operator.settings` so the pure mutation
(:mod:`.mutation`) and the standalone webhook entry point depend on nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "REFRESHBUS_INJECTION_"

#: Namespaces never injected, whatever their pods say (the operator's own is added).
DEFAULT_EXCLUDED = ("kube-system", "kube-public", "kube-node-lease")
#: Namespace label that turns injection off for a whole namespace.
NAMESPACE_LABEL = "refreshbus.io/injection"
NAMESPACE_OPT_OUT = "disabled"
NAMESPACE_OPT_IN = "enabled"
#: Path the API server POSTs AdmissionReviews to.
WEBHOOK_PATH = "/mutate-pods"
#: Name of the webhook inside the MutatingWebhookConfiguration (must be a qualified name).
WEBHOOK_NAME = "inject.refreshbus.io"


@dataclass(frozen=True, slots=True)
class InjectionConfig:
    """Everything the injector can be told. Defaults are production defaults."""

    #: Serve the webhook from the operator process (the chart turns it on; off by default so
    #: an operator started without the webhook's Service, Secret and port keeps working).
    enabled: bool = False
    #: Sidecar image (the chart pins it to the release's tag).
    sidecar_image: str = "ghcr.io/refreshbus/sidecar:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    #: Namespace the operator runs in: excluded from injection, home of the TLS Secret.
    operator_namespace: str = "refreshbus-system"
    excluded_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED
    #: Only inject in namespaces labelled refreshbus.io/injection=enabled (default: every
    #: namespace not excluded and not labelled ...=disabled).
    namespace_opt_in: bool = False
    #: Secret (in each injected pod's namespace) holding the broker URLs, and its key.
    #: The operator copies it there from ``operator_namespace`` (sidecar_rbac.py).
    broker_secret: str = "refreshbus-broker"
    broker_secret_key: str = "urls"
    #: HTTPS server of the webhook.
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 9443
    #: Generate, store and rotate the TLS material and patch the caBundle (default). Off:
    #: cert-manager (or anyone) mounts tls.crt/tls.key into ``cert_dir`` and injects the
    #: caBundle; the server reloads the files when they change.
    manage_tls: bool = True
    #: Where the serving cert and key are written for the server (an emptyDir in-cluster).
    cert_dir: str = "/tmp/refreshbus-webhook-certs"
    #: Secret (in ``operator_namespace``) holding the CA and the serving cert.
    tls_secret: str = "refreshbus-webhook-tls"
    #: Service in front of the webhook: the cert is issued for <service>.<namespace>.svc.
    service_name: str = "refreshbus-webhook"
    #: Extra DNS names / IPs for the serving cert (e.g. 127.0.0.1 for a url-mode webhook).
    extra_names: tuple[str, ...] = ()
    #: MutatingWebhookConfiguration whose caBundle the operator keeps current ("" = don't).
    webhook_configuration: str = "refreshbus-sidecar-injector"
    #: Only written into configurations this package renders (tests, docs); the chart owns it.
    failure_policy: str = "Ignore"
    #: Days a serving cert is valid, and how many days before expiry it is replaced.
    cert_validity_days: int = 365
    cert_renew_before_days: int = 30
    #: Sidecar resources (requests and limits).
    cpu_request: str = "10m"
    memory_request: str = "32Mi"
    memory_limit: str = "64Mi"
    cpu_limit: str = ""
    health_port: int = 9464
    log_level: str = "INFO"
    #: UID the sidecar runs as when it need not share the app's (image default: nonroot).
    default_uid: int = 65532

    def excluded(self) -> frozenset[str]:
        return frozenset((*self.excluded_namespaces, self.operator_namespace))


def _convert(kind: Any, raw: str) -> Any:
    if kind in (bool, "bool"):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind in (int, "int"):
        return int(raw)
    if kind in (tuple, "tuple[str, ...]"):
        return tuple(p.strip() for p in raw.replace(" ", ",").split(",") if p.strip())
    return raw


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> InjectionConfig:
    """``REFRESHBUS_INJECTION_<FIELD>`` variables, then ``overrides`` (``None`` = not given)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(InjectionConfig):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _convert(f.type, raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = InjectionConfig(**values)
    if config.failure_policy not in {"Ignore", "Fail"}:
        raise ValueError(f"failure policy must be Ignore or Fail, got {config.failure_policy!r}")
    if config.cert_renew_before_days >= config.cert_validity_days:
        raise ValueError("cert_renew_before_days must be smaller than cert_validity_days")
    return config
