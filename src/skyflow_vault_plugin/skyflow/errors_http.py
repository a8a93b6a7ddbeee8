"""How the engine's upstream errors reach the HTTP caller: one mapping, used by every path."""

from __future__ import annotations

from ..sdk.framework import CodedError, FieldError, LogicalError
from .errors import InvalidInput, SkyflowRejected, SkyflowUnavailable, UpstreamError


def to_logical(exc: Exception) -> LogicalError:
    """The SDK error for an engine error: 400 naming the field, 502 when Skyflow refused,
    503 when it could not be reached. Messages carry Skyflow's text and request ID, never a
    key or token (the error classes redact both)."""
    if isinstance(exc, InvalidInput):
        return FieldError(exc.field, exc.message)
    if isinstance(exc, SkyflowRejected):
        return CodedError(502, f"Skyflow rejected the token request: {exc}")
    if isinstance(exc, SkyflowUnavailable):
        return CodedError(503, f"Skyflow is unavailable: {exc}")
    if isinstance(exc, UpstreamError):
        return CodedError(503, f"Skyflow error: {exc}")
    raise TypeError(f"no HTTP mapping for {type(exc).__name__}")
