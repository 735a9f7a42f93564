"""Certificates for the local control plane, made with the openssl CLI (no Python
crypto dependency): a CA, the API server's serving cert, an admin client cert in
``system:masters``, and the service-account signing key pair."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from refreshbus_testenv.procs import InfraError


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InfraError(f"openssl {' '.join(args[:2])} failed: {proc.stderr}")


def make_ca(pki: Path, name: str = "ca", subject: str = "/CN=refreshbus-local-ca") -> None:
    """A self-signed CA, ``<name>.crt``/``<name>.key``, unless it already exists."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / f"{name}.crt").exists():
        return
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", subject,
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=pki)


def make_cert(
    pki: Path, name: str, subject: str, *, sans: Sequence[str] = (), client: bool = False,
    ca: str = "ca", days: int = 3650,
) -> None:
    """A key and a certificate signed by ``ca``: serving (with SANs) or client."""
    if (pki / f"{name}.crt").exists():
        return
    ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
    ext.append("extendedKeyUsage=clientAuth" if client else "extendedKeyUsage=serverAuth")
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", str(days), "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)


def make_control_plane_pki(pki: Path, extra_sans: Sequence[str] = ()) -> None:
    """Everything kube-apiserver and an admin kubeconfig need (idempotent)."""
    make_ca(pki)
    sans = ["IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local", "IP:10.96.0.1"]
    make_cert(
        pki, "apiserver", "/CN=kube-apiserver",
        sans=[*sans, *(s for s in extra_sans if s not in sans)],
    )
    make_cert(pki, "admin", "/O=system:masters/CN=refreshbus-admin", client=True)
    if not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
