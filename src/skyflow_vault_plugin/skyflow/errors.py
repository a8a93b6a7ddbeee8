"""One exception tree for the engine's upstream (Skyflow) layer.

::

    SkyflowError
    ├── InvalidInput (also a ValueError)      user-fixable input; names the field to blame
    │   ├── CredentialsError                  service-account credentials      -> HTTP 400
    │   └── InvalidContext                    the ``ctx`` claim                -> HTTP 400
    └── UpstreamError                         the token exchange failed; .category says how
        ├── SkyflowUnavailable                unreachable, timed out, rate limited,
        │                                     failing (5xx), malformed, busy   -> HTTP 503
        │   └── SkyflowUntrusted              untrusted: TLS trust (SKYFLOW_CA_FILE) -> HTTP 503
        └── SkyflowRejected                   rejected: another 4xx            -> HTTP 502

Third-party exceptions (httpx, cryptography, json) are mapped to this tree once, where they
are raised (``raise ... from exc``). The text of every exception is one line and never contains a
private key, an assertion or an access token.
"""

from __future__ import annotations

import re

__all__ = [
    "BUSY",
    "CATEGORIES",
    "FAILING",
    "MALFORMED",
    "RATE_LIMITED",
    "REJECTED",
    "TIMED_OUT",
    "UNREACHABLE",
    "CredentialsError",
    "InvalidContext",
    "InvalidInput",
    "SkyflowError",
    "SkyflowRejected",
    "SkyflowUnavailable",
    "SkyflowUntrusted",
    "UpstreamError",
    "redact",
    "safe_text",
    "short_repr",
]

# Anything shaped like a JWT (header.payload.signature, base64url) or a PEM block is replaced
# before upstream text reaches an exception message: Skyflow's messages should never echo a
# credential, but they are not ours to trust. Both passes are linear in the text: the JWT
# pattern's character classes exclude the ".", so a failed match never backtracks over a run,
# and PEM blocks are found with str.find rather than a lazy ".*?" (which rescanned the rest of
# the text from every "-----BEGIN": quadratic). The text is truncated before either runs, so
# a hostile megabyte costs no more than a short message. A JWT cut by the truncation is still
# caught: the pattern needs only its "eyJ" head, not all three parts.
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)*")
_PEM_BEGIN = "-----BEGIN"
_PEM_END = "-----END"
_MAX_TEXT = 300


def _redact_pem(text: str) -> str:
    """Replace every ``-----BEGIN ... -----END ...-----`` block (or an unterminated tail)."""
    out: list[str] = []
    position = 0
    while (start := text.find(_PEM_BEGIN, position)) != -1:
        out.append(text[position:start])
        out.append("[redacted key]")
        end = text.find(_PEM_END, start + len(_PEM_BEGIN))
        if end == -1:
            return "".join(out)
        # skip the END line's label up to its closing dashes
        close = text.find("-----", end + len(_PEM_END))
        position = len(text) if close == -1 else close + 5
    out.append(text[position:])
    return "".join(out)


def redact(text: str) -> str:
    """``text`` with token- and key-shaped substrings replaced; linear in ``len(text)``."""
    return _JWT_LIKE.sub("[redacted token]", _redact_pem(text))


def safe_text(text: str, limit: int = _MAX_TEXT) -> str:
    """Return ``text`` as one bounded line with token- and key-shaped substrings redacted.

    Truncates first (to a few times ``limit``, so that whitespace folding still leaves enough
    text), then redacts: the cost does not grow with ``len(text)``.
    """
    text = redact(text[: limit * 4])
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def short_repr(value: object) -> str:
    """``repr(value)`` cut to 40 characters, to name a bad value in an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


UNREACHABLE = "unreachable"
TIMED_OUT = "timed out"
REJECTED = "rejected"
RATE_LIMITED = "rate limited"
MALFORMED = "malformed"
FAILING = "failing"
BUSY = "busy"
UNTRUSTED = "untrusted"
CATEGORIES = (
    UNREACHABLE,
    TIMED_OUT,
    REJECTED,
    RATE_LIMITED,
    MALFORMED,
    FAILING,
    BUSY,
    UNTRUSTED,
)
"""What a caller learns about an upstream failure: one of these, the HTTP status and
Skyflow's request ID. Skyflow's own message and the network detail go to the plugin's log
(see ``UpstreamError.detail``): the endpoint is not ours to trust, and its text must not
become an oracle on the Vault host's network."""

_NEXT_STEP = {
    UNREACHABLE: "Skyflow could not be reached; check the network, DNS and TLS trust "
    "(SKYFLOW_CA_FILE) from the Vault host to the tokenURI host",
    TIMED_OUT: "Skyflow did not answer in time; retry later",
    REJECTED: "Skyflow refused the request; check the service account (clientID, keyID, key, "
    "active in Skyflow) and the role IDs",
    RATE_LIMITED: "Skyflow is rate-limiting this service account; retry later",
    MALFORMED: "Skyflow's reply could not be read; retry later",
    FAILING: "Skyflow answered with a server error; retry later",
    BUSY: "this mount's connections to Skyflow are all in use (local congestion, not "
    "Skyflow); retry, or spread the load",
    UNTRUSTED: "Skyflow's TLS certificate is not trusted by this plugin",
}


class UpstreamError(SkyflowError):
    """The token exchange with Skyflow failed.

    Attributes:
        category: one of :data:`CATEGORIES`, what the caller is told.
        summary: a short extra note for the caller (ours, never Skyflow's text).
        status: Skyflow's HTTP status, or None when no response arrived.
        request_id: the ``X-Request-Id`` Skyflow answered with, if any.
        skyflow_message: Skyflow's own error message (redacted, bounded), if any: log only.
        detail: what went wrong underneath (redacted, bounded): log only.
        attempts: how many HTTP attempts were made.
    """

    def __init__(
        self,
        summary: str = "",
        *,
        category: str = FAILING,
        status: int | None = None,
        request_id: str | None = None,
        skyflow_message: str | None = None,
        detail: str | None = None,
        attempts: int = 1,
    ) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown upstream error category {category!r}")
        self.category = category
        self.summary = safe_text(summary) if summary else ""
        self.status = status
        self.request_id = safe_text(request_id, 100) if request_id else None
        self.skyflow_message = safe_text(skyflow_message) if skyflow_message else None
        self.detail = safe_text(detail) if detail else None
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
        text = f"Skyflow token request failed: {self.category}"
        if details:
            text += f" ({', '.join(details)})"
        text += f": {_NEXT_STEP[self.category]}"
        if self.summary:
            text += f"; {self.summary}"
        return text

    def log_fields(self) -> dict[str, str | int]:
        """What the plugin log gets about this failure (never a key or token)."""
        fields: dict[str, str | int] = {"category": self.category, "attempts": self.attempts}
        if self.status is not None:
            fields["status"] = self.status
        if self.request_id:
            fields["request_id"] = self.request_id
        if self.skyflow_message:
            fields["skyflow_message"] = self.skyflow_message
        if self.detail:
            fields["detail"] = self.detail
        return fields

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

    def __init__(self, summary: str, *, detail: str | None = None) -> None:
        super().__init__(summary, category=UNTRUSTED, detail=detail)
