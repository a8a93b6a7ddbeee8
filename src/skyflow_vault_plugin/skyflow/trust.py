"""Which certificate authorities the plugin trusts for Skyflow's token endpoint.

``SKYFLOW_CA_FILE=<PEM bundle>`` replaces the default trust store for Skyflow: only the
certificates in that file are trusted. Without it the default store is used (OpenSSL's:
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` or the system's), loaded once per process.

Why a variable of our own: plugins inherit the server's environment, and on OpenBao 2.7.2 the
server's own environment wins over the catalog ``env`` (measured, see docs/operations.md).
Many hosts set ``SSL_CERT_FILE`` globally, which would silently replace a private CA given
in the catalog. No server sets ``SKYFLOW_CA_FILE``.

A changed bundle is picked up without a reload: at most every :data:`CHECK_INTERVAL` seconds
one ``stat`` compares the file's device, inode, size and modification time with the loaded
copy's, and a difference loads the file again (a new context, so new connections). A bundle
that cannot be loaded after a change keeps the last good one in use and logs a warning; one
that cannot be loaded at first use fails every token request with an error naming the file.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import SkyflowUntrusted

__all__ = [
    "CA_FILE_ENV",
    "CHECK_INTERVAL",
    "TrustStore",
    "process_trust",
    "shared_tls_context",
    "untrusted_summary",
]

CA_FILE_ENV = "SKYFLOW_CA_FILE"
CHECK_INTERVAL = 5.0
"""Seconds between two looks at ``SKYFLOW_CA_FILE`` (one ``stat`` each)."""

_log = logging.getLogger(__name__)

_Signature = tuple[int, int, int, int]
"""(device, inode, size, mtime in ns) of the bundle that was loaded."""


@dataclass(frozen=True)
class _Loaded:
    context: ssl.SSLContext
    signature: _Signature | None


class TrustStore:
    """The client TLS context for Skyflow, shared by every mount of the process.

    Each context holds its own copy of the trust store (about a megabyte for the system's),
    so mounts share one; :meth:`context` returns the same object until the bundle changes.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        check_interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        source = os.environ if env is None else env
        self.ca_file: str | None = source.get(CA_FILE_ENV) or None
        self._check_interval = check_interval
        self._clock = clock
        self._loaded: _Loaded | None = None
        self._checked_at = -math.inf
        self._reported: object = None

    def context(self) -> ssl.SSLContext:
        """The current context, reloading ``SKYFLOW_CA_FILE`` if it changed.

        Raises:
            SkyflowUntrusted: ``SKYFLOW_CA_FILE`` is set and has never been loadable.
        """
        if self.ca_file is None:
            if self._loaded is None:
                self._loaded = _Loaded(ssl.create_default_context(), None)
            return self._loaded.context
        now = self._clock()
        if self._loaded is not None and now - self._checked_at < self._check_interval:
            return self._loaded.context
        self._checked_at = now
        try:
            # One stat per interval in the event loop: cheaper than a thread hop.
            stat = os.stat(self.ca_file)
            signature = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if self._loaded is not None and self._loaded.signature == signature:
                return self._loaded.context
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return self._unloadable(exc)
        if self._loaded is not None:
            _log.info("reloaded %s=%s (the file changed)", CA_FILE_ENV, self.ca_file)
        self._loaded = _Loaded(context, signature)
        self._reported = None
        return context

    def _unloadable(self, exc: BaseException) -> ssl.SSLContext:
        reason = _reason(exc)
        if self._loaded is None:
            raise SkyflowUntrusted(
                f"SKYFLOW_CA_FILE={self.ca_file} cannot be loaded ({reason}); set it to a "
                "readable PEM file of CA certificates"
            ) from exc
        if self._reported != reason:  # once per distinct problem, not once per request
            self._reported = reason
            _log.warning(
                "%s=%s cannot be loaded (%s); still trusting the bundle loaded before",
                CA_FILE_ENV,
                self.ca_file,
                reason,
            )
        return self._loaded.context

    def untrusted_summary(self) -> str:
        """What a failed certificate verification of Skyflow means, and what fixes it."""
        if self.ca_file is not None:
            return (
                "TLS certificate verification of Skyflow failed: no CA in "
                f"SKYFLOW_CA_FILE={self.ca_file} signed its certificate; add the CA that signs "
                "the token endpoint's certificate to that PEM file"
            )
        return (
            "TLS certificate verification of Skyflow failed: the default CA store does not "
            "trust its certificate; set SKYFLOW_CA_FILE to a PEM file with the signing CA "
            "in the plugin's catalog env"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):  # an OSError too: test it first
        return f"no PEM certificates in it: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


@functools.cache
def process_trust() -> TrustStore:
    """The process's trust store, configured from the environment the plugin started with."""
    return TrustStore()


def shared_tls_context() -> ssl.SSLContext:
    """One client TLS context for every mount of the process (see :class:`TrustStore`)."""
    return process_trust().context()


def untrusted_summary() -> str:
    """The process trust store's :meth:`TrustStore.untrusted_summary`."""
    return process_trust().untrusted_summary()
