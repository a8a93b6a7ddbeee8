"""A test certificate authority and server certificate for the emulator's HTTPS.

The CA certificate is written to a file so that ``SSL_CERT_FILE=<file>`` makes OpenSSL-based
clients (httpx, requests via ``REQUESTS_CA_BUNDLE``, Go via ``SSL_CERT_FILE``) trust the
emulator. With a state directory the CA's key is kept next to it (``ca-key.pem``, owner-only)
so that a restart serves a certificate from the same CA and clients keep trusting it
(:meth:`CertificateAuthority.load_or_generate`); the server's key never touches disk except
for the instant uvicorn loads it (see :func:`server_ssl_files`).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "ServerCertificate", "server_ssl_files", "write_private"]

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
_CA_VALIDITY = datetime.timedelta(days=365)
_CA_RENEW_BEFORE = datetime.timedelta(days=1)  # a kept CA this close to expiry is replaced
_VALIDITY = datetime.timedelta(days=7)
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock differences


def write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` readable by the owner only (replacing the file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate, accepted by every TLS stack (incl. Go's, for OpenBao)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class ServerCertificate:
    """A server certificate and its key, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, common_name: str = "Skyflow emulator test CA") -> CertificateAuthority:
        """Create a new CA valid for a year."""
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load_or_generate(cls, state_dir: Path) -> tuple[CertificateAuthority, bool]:
        """The CA kept in ``state_dir`` (``ca.pem``, ``ca-key.pem``), or a new one written
        there; the flag says whether it was kept. A CA within a day of expiry is replaced."""
        cert_file, key_file = state_dir / CA_FILE, state_dir / CA_KEY_FILE
        if cert_file.exists() and key_file.exists():
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            fresh = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
            if isinstance(key, ec.EllipticCurvePrivateKey) and fresh > _CA_RENEW_BEFORE:
                return cls(cert=cert, key=key), True
        ca = cls.generate()
        write_private(
            key_file,
            ca.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        ca.write_cert(cert_file)
        return ca, False

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM (what clients trust)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_cert(self, path: str | os.PathLike[str]) -> Path:
        """Write the CA certificate (not its key) to ``path``."""
        target = Path(path)
        target.write_bytes(self.cert_pem)
        return target

    def issue_server(self, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> ServerCertificate:
        """Issue a server certificate for ``hosts`` (IP addresses or DNS names)."""
        key = _new_key()
        sans: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return ServerCertificate(cert.public_bytes(serialization.Encoding.PEM), key_pem)


@contextlib.contextmanager
def server_ssl_files(server: ServerCertificate) -> Iterator[tuple[str, str]]:
    """Yield ``(certfile, keyfile)`` paths in a private temp dir, removed on exit.

    Python's ``ssl`` loads certificate chains only from files; keep them for as short as
    possible (load, then leave the block).
    """
    with tempfile.TemporaryDirectory(prefix="skyflow-emulator-tls-") as tmp:
        cert_file = os.path.join(tmp, "server.pem")
        key_file = os.path.join(tmp, "server-key.pem")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(server.key_pem)
        Path(cert_file).write_bytes(server.cert_pem)
        yield cert_file, key_file
