"""Automatic mTLS: a fresh self-signed certificate per process, trusting only the host's.

:func:`self_signed_certificate` is public: tools and tests that play the host use it for the
host's certificate (``curve="P-521"``).

The host's certificate is ECDSA P-521, which OpenSSL (Python's ``ssl``) handles and
BoringSSL (grpcio) does not. Our own certificate is P-256: the host accepts any key, and
P-256 is cheaper to generate at start-up.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class PluginTLS:
    """The process's TLS material and the contexts built from it."""

    cert_der: bytes
    server: ssl.SSLContext
    client: ssl.SSLContext


@dataclass(frozen=True)
class SelfSignedCertificate:
    """A fresh self-signed ECDSA certificate for ``localhost`` and its private key.

    Attributes:
        cert_pem: the certificate, PEM.
        cert_der: the certificate, DER.
        key_pem: the private key, unencrypted PKCS#8 PEM (kept out of ``repr``: a key must
            never reach a log).
    """

    cert_pem: bytes
    cert_der: bytes
    key_pem: bytes = field(repr=False)


def self_signed_certificate(
    *,
    curve: Literal["P-256", "P-521"] = "P-256",
    valid_for: datetime.timedelta = datetime.timedelta(days=3650),
) -> SelfSignedCertificate:
    """A self-signed certificate for ``localhost``, its own CA, for TLS server and client use.

    The kind go-plugin's automatic mTLS uses on both sides: the plugin's own is P-256 (signed
    with SHA-256, cheap to generate at start-up); a host's is P-521 (signed with SHA-512), so
    tests and tools that play the host ask for ``curve="P-521"``.

    Args:
        curve: the ECDSA curve of the key.
        valid_for: how long the certificate is valid from now (it is also backdated a few
            minutes, for clocks that differ slightly).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if curve == "P-521":
        key = ec.generate_private_key(ec.SECP521R1())
        digest: hashes.SHA256 | hashes.SHA512 = hashes.SHA512()
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        digest = hashes.SHA256()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                key_cert_sign=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, digest)
    )
    return SelfSignedCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def build_tls(host_cert_pem: str) -> PluginTLS:
    """Contexts for serving the host and for dialling its broker, both mutually verified."""
    own = self_signed_certificate()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=host_cert_pem)
    server.set_alpn_protocols(["h2"])  # grpc-go >= 1.67 insists on ALPN

    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.load_verify_locations(cadata=host_cert_pem)
    client.set_alpn_protocols(["h2"])

    _load_chain((server, client), own.cert_pem + own.key_pem)
    return PluginTLS(cert_der=own.cert_der, server=server, client=client)


def _load_chain(contexts: tuple[ssl.SSLContext, ...], chain_pem: bytes) -> None:
    """Load the certificate and private key into ``contexts``.

    ``load_cert_chain`` reads only from a path. On Linux the path is an anonymous memory
    file (``memfd_create``): the key never reaches a disk or ``$TMPDIR``, and vanishes when
    its descriptor closes. Elsewhere, a private (0700) directory
    holds it for an instant.
    """
    with _chain_path(chain_pem) as path:
        for context in contexts:
            context.load_cert_chain(path)


@contextlib.contextmanager
def _chain_path(chain_pem: bytes) -> Iterator[str]:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("plugin-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            view = memoryview(chain_pem)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="plugin-tls-") as private_dir:
        os.chmod(private_dir, 0o700)
        path = os.path.join(private_dir, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(chain_pem)
        yield path
