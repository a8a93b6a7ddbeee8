"""How the engine's upstream errors reach the HTTP caller: one mapping, used by every path."""

from __future__ import annotations

from vault_plugin_sdk.framework import CodedError, FieldError, LogicalError

from .errors import InvalidInput, SkyflowRejected, UpstreamError


def to_logical(exc: Exception) -> LogicalError:
    """The SDK error for an engine error: 400 naming the field, 502 when Skyflow refused,
    503 when it could not be reached. Messages carry Skyflow's text and request ID, never a
    key or token (the error classes redact both)."""
    if isinstance(exc, InvalidInput):
        return FieldError(exc.field, exc.message)
    # The upstream errors' own text already says what happened ("Skyflow rejected the token
    # request (HTTP 401, request id ...): ...", "cannot reach Skyflow (...)").
    if isinstance(exc, SkyflowRejected):
        return CodedError(502, str(exc))
    if isinstance(exc, UpstreamError):
        return CodedError(503, str(exc))
    raise TypeError(f"no HTTP mapping for {type(exc).__name__}")
