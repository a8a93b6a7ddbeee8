"""The Skyflow token exchange: build the signed assertion and trade it for a bearer token.

The request is the one the official Skyflow SDKs send (same claims, header, body and scope
format; ``tests/skyflow/test_sdk_conformance.py`` pins this), but the HTTP side is ours: one
pooled ``httpx.AsyncClient`` per mount, bounded timeouts, a total deadline, retries with
exponential backoff and full jitter on transient failures, and Skyflow's status, message and
request id kept in the raised :mod:`.errors`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeAlias

import httpx
import jwt

from .. import __version__
from .credentials import ServiceAccount, token_endpoint
from .errors import (
    BUSY,
    FAILING,
    MALFORMED,
    RATE_LIMITED,
    REJECTED,
    TIMED_OUT,
    UNREACHABLE,
    InvalidContext,
    InvalidInput,
    SkyflowRejected,
    SkyflowUnavailable,
    SkyflowUntrusted,
    UpstreamError,
)
from .trust import untrusted_summary

__all__ = [
    "ACCESS_TOKEN_LIFETIME",
    "ASSERTION_LIFETIME",
    "GRANT_TYPE",
    "AttemptHook",
    "Ctx",
    "ExchangePolicy",
    "IssuedToken",
    "TokenClient",
    "build_assertion",
    "canonical_ctx",
    "format_scope",
    "validate_ctx",
]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The assertion is a bearer credential for minting tokens until it expires, so it lives only
# as long as one exchange needs. The SDKs sign exp = now + 60 min; Skyflow documents no
# minimum lifetime and only checks that exp lies ahead. One exchange reuses its assertion
# across retries for at most the request deadline (below Vault's 90 s limit), so 5 minutes
# leaves over 3 minutes for the Vault host's clock to run behind Skyflow's.
ASSERTION_LIFETIME = 300  # seconds
ACCESS_TOKEN_LIFETIME = 3600  # Skyflow's access tokens live 60 min
DEFAULT_TOKEN_LIFETIME = float(ACCESS_TOKEN_LIFETIME)
CTX_KEY = re.compile(r"[A-Za-z0-9_]+")
MAX_CTX_BYTES = 8 * 1024  # ctx becomes part of cache keys; keep it bounded
_MAX_CTX_DEPTH = 8
MAX_RESPONSE_BYTES = 64 * 1024
"""A token reply is a few KB; more is refused unread (the stream is cut at this size)."""
MAX_ERROR_BYTES = 16 * 1024
"""An error reply is read this far for Skyflow's message and request ID, no further."""
MAX_MOUNT_BACKOFF = 300.0
"""The longest a mount pauses after a 429 or Retry-After, whatever the endpoint asks."""
_DEFAULT_429_PAUSE = 1.0


def _pause_clock() -> float:
    """The clock of the mount's rate-limit pause (a seam for tests: patching time.monotonic
    itself would move the event loop's clock too)."""
    return time.monotonic()


_VAULT_REQUEST_LIMIT = 90.0

JSONScalar: TypeAlias = str | int | float | bool | None
JSONValue: TypeAlias = JSONScalar | list["JSONValue"] | dict[str, "JSONValue"]
Ctx: TypeAlias = str | int | float | bool | Mapping[str, Any]
"""What a caller may pass as ``ctx``: a string, number, bool, or a map of ``[A-Za-z0-9_]+`` keys."""

AttemptHook: TypeAlias = Callable[[int | None, str | None, float], None]
"""``on_attempt(status, request_id, elapsed_seconds)``; status is None when no response came."""

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- ctx


def validate_ctx(ctx: object) -> str | int | float | bool | dict[str, JSONValue] | None:
    """Validate a ``ctx`` value and return what goes into the assertion, or None to omit it.

    A blank string and an empty map are dropped (as the SDK does). Map keys must match
    ``^[a-zA-Z0-9_]+$``; values may be any JSON value. Raises :class:`InvalidContext`.
    """
    if ctx is None:
        return None
    if isinstance(ctx, str):
        if not ctx.strip():
            return None
        _check_size(ctx)
        return ctx
    if isinstance(ctx, bool | int):
        return ctx
    if isinstance(ctx, float):
        if not math.isfinite(ctx):
            raise InvalidContext("must be a finite number")
        return ctx
    if isinstance(ctx, Mapping):
        if not ctx:
            return None
        for key in ctx:
            # fullmatch, not re.match with "$": "$" would also accept a trailing newline
            if not isinstance(key, str) or not CTX_KEY.fullmatch(key):
                raise InvalidContext(
                    f"map key {_short(key)} must match ^[a-zA-Z0-9_]+$ "
                    "(letters, digits and underscores)"
                )
        value = {key: _json_value(item, 1) for key, item in ctx.items()}
        _check_size(value)
        return value
    raise InvalidContext(f"must be a string, number, boolean or map, not {type(ctx).__name__}")


def canonical_ctx(ctx: object) -> str:
    """Return a stable text form of a ``ctx`` (sorted-key JSON) for cache keys; ``""`` if none."""
    value = validate_ctx(ctx)
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _json_value(value: object, depth: int) -> JSONValue:
    if depth > _MAX_CTX_DEPTH:
        raise InvalidContext(f"is nested more than {_MAX_CTX_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidContext("numbers must be finite")
        return value
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidContext("nested map keys must be strings")
            out[key] = _json_value(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(item, depth + 1) for item in value]
    raise InvalidContext(f"values must be JSON values, not {type(value).__name__}")


def _check_size(value: JSONValue) -> None:
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_CTX_BYTES:
        raise InvalidContext(f"is larger than {MAX_CTX_BYTES} bytes")


def _short(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------ assertion & scope


def format_scope(role_ids: Sequence[str]) -> str | None:
    """Return Skyflow's scope for role IDs (``"role:<a> role:<b>"``), or None when there are none.

    Raises :class:`InvalidInput` on ``role_ids`` for an empty ID or one containing whitespace.
    """
    if isinstance(role_ids, str):
        raise TypeError("role_ids must be a sequence of strings, not a string")
    if not role_ids:
        return None
    for role_id in role_ids:
        if not isinstance(role_id, str) or not role_id or any(c.isspace() for c in role_id):
            raise InvalidInput("role_ids", f"invalid role ID {_short(role_id)}")
    return " ".join(f"role:{role_id}" for role_id in role_ids)


def build_assertion(account: ServiceAccount, ctx: object = None, now: float | None = None) -> str:
    """Sign the RS256 JWT that Skyflow exchanges for a bearer token.

    Claims (in the SDK's order): ``iss`` = ``sub`` = clientID, ``key`` = keyID,
    ``aud`` = tokenURI, ``exp`` = now + :data:`ASSERTION_LIFETIME` (5 min; the SDK signs
    60 min), and ``ctx`` when given and not empty. Like the SDK
    we send no ``iat``; the header is PyJWT's ``{"alg": "RS256", "typ": "JWT"}``.
    """
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": account.client_id,
        "key": account.key_id,
        "aud": account.token_uri,
        "sub": account.client_id,
        "exp": int(issued) + ASSERTION_LIFETIME,
    }
    resolved = validate_ctx(ctx)
    if resolved is not None:
        claims["ctx"] = resolved
    return jwt.encode(claims, account.private_key, algorithm="RS256")


# ----------------------------------------------------------------------------------- results


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


@dataclass(frozen=True)
class ExchangePolicy:
    """Timeouts and retry behaviour of the token exchange (all durations in seconds)."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 30.0
    """Total budget for one exchange, retries included; must stay inside Vault's 90 s limit."""
    max_attempts: int = 4
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    max_connections: int = 16

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "deadline", "backoff_max"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.backoff_base < 0:
            raise ValueError("backoff_base must not be negative")
        if self.deadline >= _VAULT_REQUEST_LIMIT:
            raise ValueError(f"deadline must be below Vault's {_VAULT_REQUEST_LIMIT:g} s limit")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before retry number ``attempt`` (1-based)."""
        cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return (rng or random).uniform(0.0, cap)


@dataclass
class _Outcome:
    """What one HTTP attempt produced."""

    status: int | None = None
    request_id: str | None = None
    token: IssuedToken | None = None
    error: UpstreamError | None = None
    cause: BaseException | None = None
    retryable: bool = False
    retry_after: float | None = None


# ------------------------------------------------------------------------------------ client


class TokenClient:
    """Exchanges service-account assertions for Skyflow bearer tokens.

    Owns one pooled ``httpx.AsyncClient``; create one per mount and close it with
    :meth:`aclose` (or use ``async with``). TLS trust comes from ``verify``, by default
    ``ssl.create_default_context()``; the engine passes :func:`.trust.shared_tls_context`.
    """

    def __init__(
        self,
        policy: ExchangePolicy | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | None = None,
        on_attempt: AttemptHook | None = None,
        trust_env: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or ExchangePolicy()
        self._on_attempt = on_attempt
        self._rng = rng
        # time.monotonic() before which this mount sends Skyflow nothing new: set by a 429 or
        # a Retry-After, so that one caller cycling ctx values cannot spend the service
        # account's rate limit for every other caller of the mount.
        self._not_before = 0.0
        limits = httpx.Limits(
            max_connections=self.policy.max_connections,
            max_keepalive_connections=self.policy.max_connections,
        )
        self._http = httpx.AsyncClient(
            transport=transport,
            verify=verify if verify is not None else ssl.create_default_context(),
            timeout=self._timeout(self.policy.deadline),
            limits=limits,
            follow_redirects=False,
            trust_env=trust_env,
            headers={
                "User-Agent": f"skyflow-vault-plugin/{__version__}",
                "Accept": "application/json",
                # no compressed replies: a small gzip body can inflate to gigabytes
                "Accept-Encoding": "identity",
            },
        )

    async def __aenter__(self) -> TokenClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        await self._http.aclose()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._http.is_closed

    def backing_off(self) -> float:
        """Seconds this mount still waits after Skyflow's 429 or Retry-After (0 if none)."""
        return max(0.0, self._not_before - _pause_clock())

    def _pause(self, outcome: _Outcome) -> None:
        if outcome.status != 429 and outcome.retry_after is None:
            return
        pause = outcome.retry_after if outcome.retry_after is not None else _DEFAULT_429_PAUSE
        until = _pause_clock() + min(pause, MAX_MOUNT_BACKOFF)
        self._not_before = max(self._not_before, until)

    async def exchange(
        self,
        account: ServiceAccount,
        role_ids: Sequence[str] = (),
        ctx: object = None,
        deadline: float | None = None,
    ) -> IssuedToken:
        """Mint a bearer token for ``account`` scoped to ``role_ids`` with optional ``ctx``.

        ``deadline`` is an absolute ``time.monotonic()`` instant; the policy's own deadline
        applies too, whichever comes first. Raises :class:`InvalidContext` / :class:`InvalidInput`
        before any network call, :class:`SkyflowRejected` on a non-retryable 4xx and
        :class:`SkyflowUnavailable` when retries or the deadline are exhausted. Cancellation
        propagates at once.
        """
        if self.closed:
            raise RuntimeError("TokenClient is closed")
        waiting = self.backing_off()
        if waiting > 0:
            raise SkyflowUnavailable(
                f"the mount is backing off for {waiting:.1f} s after Skyflow's rate limit",
                category=RATE_LIMITED,
                attempts=0,
            )
        limit = time.monotonic() + self.policy.deadline
        if deadline is not None:
            limit = min(limit, deadline)
        body: dict[str, str] = {
            "grant_type": GRANT_TYPE,
            "assertion": build_assertion(account, ctx),
        }
        scope = format_scope(role_ids)
        if scope is not None:
            body["scope"] = scope
        url = token_endpoint(account.token_uri)

        outcome = _Outcome()
        attempt = 0
        while attempt < self.policy.max_attempts:
            remaining = limit - time.monotonic()
            if remaining <= 0:
                break
            attempt += 1
            outcome = await self._attempt(url, body, remaining)
            if outcome.token is not None:
                return _with_attempts(outcome.token, attempt)
            self._pause(outcome)
            if not outcome.retryable or attempt >= self.policy.max_attempts:
                break
            delay = (
                outcome.retry_after
                if outcome.retry_after is not None
                else self.policy.backoff(attempt, self._rng)
            )
            # another exchange of this mount may have been told to wait longer
            delay = max(delay, self.backing_off())
            if time.monotonic() + delay >= limit:
                # sleeping would only run into the deadline
                if outcome.retry_after is not None and outcome.error is not None:
                    outcome.error.summary = (
                        f"its Retry-After of {outcome.retry_after:g} s is past the deadline"
                    )
                break
            await asyncio.sleep(delay)

        error = outcome.error
        if error is None:  # the deadline passed before the first attempt
            error = SkyflowUnavailable(
                "the request deadline passed before Skyflow was called", category=TIMED_OUT
            )
        error.attempts = max(attempt, 1)
        fields = error.log_fields()
        _log.warning(
            "Skyflow token request failed: %s",
            " ".join(f"{key}={value!r}" for key, value in fields.items()),
            extra={"skyflow_" + key: value for key, value in fields.items()},
        )
        raise error from outcome.cause

    # -- one attempt ----------------------------------------------------------------------

    def _timeout(self, remaining: float) -> httpx.Timeout:
        connect = min(self.policy.connect_timeout, remaining)
        read = min(self.policy.read_timeout, remaining)
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)

    async def _attempt(self, url: str, body: Mapping[str, str], remaining: float) -> _Outcome:
        started = time.monotonic()
        try:
            # httpx's timeouts are per operation; asyncio.timeout bounds the whole attempt
            async with (
                asyncio.timeout(remaining),
                self._http.stream(
                    "POST", url, json=body, timeout=self._timeout(remaining)
                ) as response,
            ):
                outcome = await _read_reply(response)
        except TimeoutError as exc:
            outcome = _Outcome(
                error=SkyflowUnavailable(
                    "no answer before the request deadline", category=TIMED_OUT
                ),
                cause=exc,
            )
        except httpx.PoolTimeout as exc:
            # Not Skyflow's slowness: every pooled connection of this mount stayed busy.
            outcome = _Outcome(
                error=SkyflowUnavailable(
                    f"no free connection among {self.policy.max_connections} within "
                    f"{self.policy.connect_timeout:g} s",
                    category=BUSY,
                ),
                cause=exc,
            )
        except httpx.TimeoutException as exc:
            outcome = _failure(SkyflowUnavailable, TIMED_OUT, exc, _kind(exc), retryable=True)
        except httpx.DecodingError as exc:
            outcome = _failure(SkyflowUnavailable, MALFORMED, exc, _kind(exc))
        except httpx.TransportError as exc:
            outcome = _transport_failure(exc)
        except httpx.HTTPError as exc:  # anything else httpx may raise on a hostile reply
            outcome = _failure(SkyflowUnavailable, MALFORMED, exc, _kind(exc))
        self._report(outcome, time.monotonic() - started)
        return outcome

    def _report(self, outcome: _Outcome, elapsed: float) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(outcome.status, outcome.request_id, elapsed)
        except Exception:
            # telemetry must never break token issuance
            _log.debug("on_attempt hook failed", exc_info=True)


def _with_attempts(token: IssuedToken, attempts: int) -> IssuedToken:
    return IssuedToken(
        access_token=token.access_token,
        token_type=token.token_type,
        expires_at=token.expires_at,
        issued_at=token.issued_at,
        attempts=attempts,
    )


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def _failure(
    error_type: type[UpstreamError],
    category: str,
    exc: BaseException,
    detail: str,
    *,
    retryable: bool = False,
) -> _Outcome:
    return _Outcome(
        error=error_type(category=category, detail=detail),
        cause=exc,
        retryable=retryable,
    )


def _transport_failure(exc: httpx.TransportError) -> _Outcome:
    if _is_certificate_error(exc):
        # retrying cannot fix trust; the message names the setting that does
        return _Outcome(
            error=SkyflowUntrusted(untrusted_summary(), detail=f"{_kind(exc)}: {exc}"),
            cause=exc,
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.ProxyError):
        return _failure(SkyflowUnavailable, UNREACHABLE, exc, _kind(exc))
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return _failure(SkyflowUnavailable, MALFORMED, exc, f"{_kind(exc)}: {exc}")
    return _failure(
        SkyflowUnavailable, UNREACHABLE, exc, f"{_kind(exc)}: {exc or ''}", retryable=True
    )


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


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


async def _read_reply(response: httpx.Response) -> _Outcome:
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


def _malformed(status: int, request_id: str | None, detail: str) -> _Outcome:
    return _Outcome(
        status=status,
        request_id=request_id,
        error=SkyflowUnavailable(
            category=MALFORMED, status=status, request_id=request_id, detail=detail
        ),
    )


def _classify(
    status: int, request_id: str | None, retry_after: str | None, content: bytes | None
) -> _Outcome:
    if 200 <= status < 300:
        token = _parse_token(content or b"", issued_at=time.time())
        if token is None:
            return _malformed(status, request_id, "no usable accessToken in the reply")
        return _Outcome(status=status, request_id=request_id, token=token)

    message = _error_message(content) if content is not None else None
    if status == 429 or status >= 500:
        return _Outcome(
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
        return _Outcome(
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
