"""One exception tree for the engine's upstream (Skyflow) layer.

::

    SkyflowError
    ├── InvalidInput (also a ValueError)      user-fixable input; names the field to blame
    │   ├── CredentialsError                  service-account credentials      -> HTTP 400
    │   └── InvalidContext                    the ``ctx`` claim                -> HTTP 400
    └── UpstreamError                         the token exchange failed
        ├── SkyflowUnavailable                network, timeout, 5xx, 429       -> HTTP 503
        │   └── SkyflowUntrusted              TLS trust (SKYFLOW_CA_FILE)      -> HTTP 503
        └── SkyflowRejected                   Skyflow answered another 4xx     -> HTTP 502

Third-party exceptions (httpx, cryptography, json) are mapped to this tree once, where they
are raised (``raise ... from exc``). The text of every exception is one line and never contains a
private key, an assertion or an access token.
"""

from __future__ import annotations

import re

__all__ = [
    "CredentialsError",
    "InvalidContext",
    "InvalidInput",
    "SkyflowError",
    "SkyflowRejected",
    "SkyflowUnavailable",
    "SkyflowUntrusted",
    "UpstreamError",
    "safe_text",
]

# Anything shaped like a JWT (header.payload.signature, base64url) or a PEM block is replaced
# before upstream text reaches an exception message: Skyflow's messages should never echo a
# credential, but they are not ours to trust.
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM_LIKE = re.compile(r"-----BEGIN[^-]*-----.*?(-----END[^-]*-----|$)", re.DOTALL)
_MAX_TEXT = 300


def safe_text(text: str, limit: int = _MAX_TEXT) -> str:
    """Return ``text`` as one bounded line with token- and key-shaped substrings redacted."""
    text = _PEM_LIKE.sub("[redacted key]", text)
    text = _JWT_LIKE.sub("[redacted token]", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class SkyflowError(Exception):
    """Base class of every error raised by the Skyflow layer."""


class InvalidInput(SkyflowError, ValueError):
    """A user-fixable problem with an input; ``field`` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class CredentialsError(InvalidInput):
    """The service-account credentials are unusable (missing field, bad URI, bad key...).

    ``field`` is the configuration field to blame, e.g. ``credentials_json.privateKey``.
    """


class InvalidContext(InvalidInput):
    """The ``ctx`` value cannot be sent to Skyflow."""

    def __init__(self, message: str, field: str = "ctx") -> None:
        super().__init__(field, message)


class UpstreamError(SkyflowError):
    """The token exchange with Skyflow failed.

    Attributes:
        status: Skyflow's HTTP status, or None when no response arrived.
        request_id: the ``X-Request-Id`` Skyflow answered with, if any.
        skyflow_message: Skyflow's own error message (redacted, bounded), if any.
        attempts: how many HTTP attempts were made.
    """

    def __init__(
        self,
        summary: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        skyflow_message: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.summary = safe_text(summary)
        self.status = status
        self.request_id = safe_text(request_id, 100) if request_id else None
        self.skyflow_message = safe_text(skyflow_message) if skyflow_message else None
        self.attempts = attempts
        super().__init__(self._render())

    def _render(self) -> str:
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if self.attempts != 1:
            details.append(f"{self.attempts} attempts")
        text = self.summary
        if details:
            text += f" ({', '.join(details)})"
        if self.skyflow_message:
            text += f": {self.skyflow_message}"
        return text

    def __str__(self) -> str:
        return self._render()


class SkyflowUnavailable(UpstreamError):
    """Skyflow could not be reached or did not answer usefully in time; worth retrying later."""


class SkyflowRejected(UpstreamError):
    """Skyflow refused the request (a 4xx other than 429); retrying will not help."""


class SkyflowUntrusted(SkyflowUnavailable):
    """Skyflow's certificate is not trusted, or the CA bundle cannot be loaded.

    Retrying cannot help: the fix is the trust store (``SKYFLOW_CA_FILE``), and the message
    says so.
    """
