"""Automatic mTLS: a fresh self-signed certificate per process, trusting only the host's.

:func:`self_signed_certificate` (from :mod:`.selfsigned`) is public: tools and tests that
play the host use it for the host's certificate (``curve="P-521"``).

The host's certificate is ECDSA P-521, which OpenSSL (Python's ``ssl``) handles and
BoringSSL (grpcio) does not. Our own certificate is P-256: the host accepts any key, and
P-256 is cheaper to generate at start-up.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from typing import NamedTuple

from .selfsigned import SelfSignedCertificate, self_signed_certificate

__all__ = ["PluginTLS", "SelfSignedCertificate", "build_tls", "self_signed_certificate"]


# A NamedTuple, not a dataclass: a dataclass compiles its methods when it is defined, 0.3 ms
# (0.6 ms when frozen) of every start (issue 12).
class PluginTLS(NamedTuple):
    """The process's TLS material and the contexts built from it."""

    cert_der: bytes
    server: ssl.SSLContext
    client: ssl.SSLContext


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
    import tempfile  # only here: the module imports shutil and compression libraries

    with tempfile.TemporaryDirectory(prefix="plugin-tls-") as private_dir:
        os.chmod(private_dir, 0o700)
        path = os.path.join(private_dir, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(chain_pem)
        yield path
