"""Skyflow's reply to a token request: read within a byte cap, classified, parsed.

A success yields an :class:`IssuedToken` (its expiry read from the token's ``exp``); an error
yields the :mod:`.errors` exception with Skyflow's status, message and request id, and whether
and when a retry may follow (``Retry-After``). The body is never echoed: only fields we parse
leave this module. :mod:`.client` sends the request and decides about retries.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass, field

import httpx
import jwt

from .errors import (
    FAILING,
    MALFORMED,
    RATE_LIMITED,
    REJECTED,
    SkyflowRejected,
    SkyflowUnavailable,
    UpstreamError,
)

__all__ = [
    "ACCESS_TOKEN_LIFETIME",
    "MAX_ERROR_BYTES",
    "MAX_MOUNT_BACKOFF",
    "MAX_RESPONSE_BYTES",
    "IssuedToken",
    "Outcome",
    "read_reply",
]

ACCESS_TOKEN_LIFETIME = 3600  # Skyflow's access tokens live 60 min
DEFAULT_TOKEN_LIFETIME = float(ACCESS_TOKEN_LIFETIME)
MAX_RESPONSE_BYTES = 64 * 1024
"""A token reply is a few KB; more is refused unread (the stream is cut at this size)."""
MAX_ERROR_BYTES = 16 * 1024
"""An error reply is read this far for Skyflow's message and request ID, no further."""
MAX_MOUNT_BACKOFF = 300.0
"""The longest a mount pauses after a 429 or Retry-After, whatever the endpoint asks."""


@dataclass(frozen=True)
class IssuedToken:
    """A bearer token from Skyflow. ``repr`` hides the token itself.

    ``expires_at`` and ``issued_at`` are epoch seconds; ``expires_at`` comes from the token's
    ``exp`` claim (read without verifying the signature: we do not hold Skyflow's key).
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_at: float
    issued_at: float
    attempts: int = 1

    def expires_in(self, now: float | None = None) -> float:
        """Seconds until the token expires (never negative)."""
        current = time.time() if now is None else now
        return max(0.0, self.expires_at - current)


@dataclass
class Outcome:
    """What one HTTP attempt produced."""

    status: int | None = None
    request_id: str | None = None
    token: IssuedToken | None = None
    error: UpstreamError | None = None
    cause: BaseException | None = None
    retryable: bool = False
    retry_after: float | None = None


class _TooLarge(Exception):
    """The reply's body passed its byte cap."""


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes; raises :class:`_TooLarge` past it (the rest is
    never read: the connection is dropped when the stream closes)."""
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    # aiter_bytes decodes nothing here: any Content-Encoding but identity was refused before
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def read_reply(response: httpx.Response) -> Outcome:
    """Read a streamed reply within its byte cap and classify it."""
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    success = 200 <= status < 300
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # asked for identity; decoding it anyway would let a tiny body inflate without bound
        return _malformed(status, request_id, f"unrequested Content-Encoding {encoding!r}")
    try:
        content = await _read_capped(response, MAX_RESPONSE_BYTES if success else MAX_ERROR_BYTES)
    except _TooLarge:
        if success:
            return _malformed(status, request_id, f"reply over {MAX_RESPONSE_BYTES} bytes")
        content = None  # an error is still an error; only its message is lost
    return _classify(status, request_id, response.headers.get("retry-after"), content)


def _malformed(status: int, request_id: str | None, detail: str) -> Outcome:
    return Outcome(
        status=status,
        request_id=request_id,
        error=SkyflowUnavailable(
            category=MALFORMED, status=status, request_id=request_id, detail=detail
        ),
    )


def _classify(
    status: int, request_id: str | None, retry_after: str | None, content: bytes | None
) -> Outcome:
    if 200 <= status < 300:
        token = _parse_token(content or b"", issued_at=time.time())
        if token is None:
            return _malformed(status, request_id, "no usable accessToken in the reply")
        return Outcome(status=status, request_id=request_id, token=token)

    message = _error_message(content) if content is not None else None
    if status == 429 or status >= 500:
        return Outcome(
            status=status,
            request_id=request_id,
            error=SkyflowUnavailable(
                category=RATE_LIMITED if status == 429 else FAILING,
                status=status,
                request_id=request_id,
                skyflow_message=message,
            ),
            retryable=True,
            retry_after=_retry_after(retry_after),
        )
    if 400 <= status < 500:
        return Outcome(
            status=status,
            request_id=request_id,
            error=SkyflowRejected(
                category=REJECTED, status=status, request_id=request_id, skyflow_message=message
            ),
        )
    return _malformed(status, request_id, f"unexpected HTTP status {status}")


def _parse_token(content: bytes, issued_at: float) -> IssuedToken | None:
    """Read ``{"accessToken", "tokenType"}``; None when malformed (never echo the body)."""
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 too
        return None
    if not isinstance(data, dict):
        return None
    access_token = data.get("accessToken")
    token_type = data.get("tokenType", "Bearer")
    if not isinstance(access_token, str) or not access_token.strip():
        return None
    if not isinstance(token_type, str) or not token_type or len(token_type) > 64:
        return None
    return IssuedToken(
        access_token=access_token,
        token_type=token_type,
        expires_at=_token_expiry(access_token, issued_at),
        issued_at=issued_at,
    )


_MAX_EXP = 253402300799  # 9999-12-31T23:59:59Z: later instants have no RFC 3339 form


def _token_expiry(access_token: str, issued_at: float) -> float:
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, RecursionError, OverflowError):
        return issued_at + DEFAULT_TOKEN_LIFETIME  # opaque token: assume Skyflow's 60 min
    exp = claims.get("exp") if isinstance(claims, dict) else None
    # range first: math.isfinite(10**400) raises OverflowError
    if isinstance(exp, int | float) and not isinstance(exp, bool) and 0 < exp <= _MAX_EXP:
        return float(exp)
    return issued_at + DEFAULT_TOKEN_LIFETIME


def _error_message(content: bytes) -> str | None:
    """Skyflow's ``error.message``; the raw body is never used (it could echo anything)."""
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_MOUNT_BACKOFF)
