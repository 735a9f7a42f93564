"""The webhook's TLS: a self-signed CA and a serving certificate it signs, as PEM.

Pure functions over PEM bytes and a clock (the Secret round-trip lives in
:mod:`.webhook`). The serving certificate is replaced when it comes within
``renew_before`` of expiry or no longer covers the names asked for; the CA (10 years) is
replaced -- together with the serving certificate -- only when it nears its own expiry,
and the caBundle is patched with the new one at the same time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
#: Keys of the TLS Secret (tls.crt/tls.key as in a kubernetes.io/tls Secret, plus the CA).
CA_CRT, CA_KEY, TLS_CRT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"


@dataclass(frozen=True, slots=True)
class Bundle:
    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes

    def as_data(self) -> dict[str, bytes]:
        return {CA_CRT: self.ca_crt, CA_KEY: self.ca_key, TLS_CRT: self.tls_crt, TLS_KEY: self.tls_key}

    @classmethod
    def from_data(cls, data: Mapping[str, bytes]) -> Bundle | None:
        if not all(data.get(k) for k in (CA_CRT, CA_KEY, TLS_CRT, TLS_KEY)):
            return None
        return cls(data[CA_CRT], data[CA_KEY], data[TLS_CRT], data[TLS_KEY])


def service_names(service: str, namespace: str) -> list[str]:
    """DNS names the API server may use for ``service:`` in a webhook clientConfig."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(
    common_name: str = "refreshbus-webhook-ca", now: dt.datetime | None = None
) -> tuple[bytes, bytes]:
    now = now or _now()
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _san(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def make_serving(
    ca_crt: bytes, ca_key: bytes, names: Sequence[str], days: int, now: dt.datetime | None = None
) -> tuple[bytes, bytes]:
    """A serving certificate for ``names`` (DNS names or IP addresses), signed by the CA."""
    now = now or _now()
    ca = x509.load_pem_x509_certificate(ca_crt)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_bundle(names: Sequence[str], days: int, now: dt.datetime | None = None) -> Bundle:
    ca_crt, ca_key = make_ca(now=now)
    tls_crt, tls_key = make_serving(ca_crt, ca_key, names, days, now)
    return Bundle(ca_crt, ca_key, tls_crt, tls_key)


def expires(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def covers(cert_pem: bytes, names: Sequence[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names} <= have


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
        return False
    return True


def renew(
    current: Bundle | None,
    names: Sequence[str],
    days: int,
    renew_before_days: int,
    now: dt.datetime | None = None,
) -> Bundle | None:
    """The bundle to store instead of ``current``, or None when ``current`` is still good."""
    now = now or _now()
    margin = dt.timedelta(days=renew_before_days)
    if current is None or expires(current.ca_crt) - margin <= now:
        return new_bundle(names, days, now)
    if (
        expires(current.tls_crt) - margin <= now
        or not covers(current.tls_crt, names)
        or not signed_by(current.tls_crt, current.ca_crt)
    ):
        tls_crt, tls_key = make_serving(current.ca_crt, current.ca_key, names, days, now)
        return Bundle(current.ca_crt, current.ca_key, tls_crt, tls_key)
    return None
