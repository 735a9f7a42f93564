"""The webhook's CA and serving certificate: issue, verify, renew."""

from __future__ import annotations

import datetime as dt

from refreshbus_operator.injection import certs
from refreshbus_operator.injection.config import InjectionConfig, from_env

NAMES = certs.service_names("refreshbus-webhook", "refreshbus-system")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_service_names() -> None:
    assert NAMES == [
        "refreshbus-webhook",
        "refreshbus-webhook.refreshbus-system",
        "refreshbus-webhook.refreshbus-system.svc",
        "refreshbus-webhook.refreshbus-system.svc.cluster.local",
    ]


def test_new_bundle_is_signed_by_its_ca_and_covers_the_names() -> None:
    bundle = certs.new_bundle([*NAMES, "127.0.0.1"], 365, NOW)
    assert certs.signed_by(bundle.tls_crt, bundle.ca_crt)
    assert certs.covers(bundle.tls_crt, [*NAMES, "127.0.0.1"])
    assert not certs.covers(bundle.tls_crt, ["other.example"])
    assert certs.expires(bundle.tls_crt) - NOW <= dt.timedelta(days=365)
    other = certs.new_bundle(NAMES, 365, NOW)
    assert not certs.signed_by(bundle.tls_crt, other.ca_crt)


def test_good_bundle_is_kept() -> None:
    bundle = certs.new_bundle(NAMES, 365, NOW)
    assert certs.renew(bundle, NAMES, 365, 30, NOW + dt.timedelta(days=300)) is None


def test_serving_cert_is_renewed_before_expiry_under_the_same_ca() -> None:
    bundle = certs.new_bundle(NAMES, 365, NOW)
    later = NOW + dt.timedelta(days=340)
    renewed = certs.renew(bundle, NAMES, 365, 30, later)
    assert renewed is not None
    assert renewed.ca_crt == bundle.ca_crt
    assert renewed.tls_crt != bundle.tls_crt
    assert certs.expires(renewed.tls_crt) > certs.expires(bundle.tls_crt)
    assert certs.signed_by(renewed.tls_crt, bundle.ca_crt)


def test_new_names_get_a_new_serving_cert() -> None:
    bundle = certs.new_bundle(NAMES, 365, NOW)
    renewed = certs.renew(bundle, [*NAMES, "10.0.0.7"], 365, 30, NOW)
    assert renewed is not None
    assert certs.covers(renewed.tls_crt, ["10.0.0.7"])


def test_ca_near_expiry_replaces_everything() -> None:
    bundle = certs.new_bundle(NAMES, 365, NOW)
    late = NOW + dt.timedelta(days=certs.CA_DAYS - 10)
    renewed = certs.renew(bundle, NAMES, 365, 30, late)
    assert renewed is not None
    assert renewed.ca_crt != bundle.ca_crt


def test_missing_or_partial_secret_data_means_a_new_bundle() -> None:
    assert certs.Bundle.from_data({"ca.crt": b"x"}) is None
    assert certs.renew(None, NAMES, 365, 30, NOW) is not None


def test_config_from_env() -> None:
    config = from_env(
        {
            "REFRESHBUS_INJECTION_ENABLED": "true",
            "REFRESHBUS_INJECTION_WEBHOOK_PORT": "8443",
            "REFRESHBUS_INJECTION_EXCLUDED_NAMESPACES": "kube-system, infra",
            "REFRESHBUS_INJECTION_FAILURE_POLICY": "Fail",
        }
    )
    assert config.enabled
    assert config.webhook_port == 8443
    assert config.excluded() == {"kube-system", "infra", "refreshbus-system"}
    assert config.failure_policy == "Fail"
    assert InjectionConfig().failure_policy == "Ignore"
