"""The ``error.type`` of a failed request: a short, bounded name for what went wrong."""

from __future__ import annotations

import asyncio

from vault_plugin_sdk.framework import (
    BadRequest,
    FieldError,
    LogicalError,
    PermissionDenied,
    StorageError,
)

from ..errors import (
    CredentialsError,
    InvalidContext,
    InvalidInput,
    SkyflowError,
    SkyflowRejected,
    SkyflowUnavailable,
    UpstreamError,
)

__all__ = ["classify_error"]


def classify_error(exc: BaseException) -> str:
    """A bounded error type for an exception a handler raised.

    The engine's own error (kept as the ``__context__`` of the SDK error it was mapped to)
    decides when there is one; otherwise the SDK error's class or status.
    """
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    engine = _engine_error(exc)
    if engine is not None:
        return _engine_error_type(engine)
    if isinstance(exc, FieldError):
        return "invalid_input"
    if isinstance(exc, BadRequest):
        return "bad_request"
    if isinstance(exc, PermissionDenied):
        return "permission_denied"
    if isinstance(exc, LogicalError):
        return "not_found" if exc.status == 404 else f"http_{exc.status}"
    if isinstance(exc, StorageError):
        return "storage"
    return "internal"


def _engine_error(exc: BaseException) -> SkyflowError | None:
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, SkyflowError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _engine_error_type(error: SkyflowError) -> str:
    if isinstance(error, SkyflowRejected):
        return "skyflow_rejected"
    if isinstance(error, SkyflowUnavailable):
        if error.status == 429:
            return "skyflow_rate_limited"
        if error.status is None:
            return "skyflow_timeout" if _timed_out(error) else "skyflow_unreachable"
        return "skyflow_unavailable"
    if isinstance(error, UpstreamError):
        return "skyflow_error"
    if isinstance(error, InvalidContext):
        return "invalid_ctx"
    if isinstance(error, CredentialsError):
        return "invalid_credentials"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    return "skyflow_error"


def _timed_out(error: UpstreamError) -> bool:
    cause = error.__cause__
    if cause is None:
        return "deadline" in error.summary
    return isinstance(cause, TimeoutError) or type(cause).__name__.endswith("Timeout")
