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
    InvalidContext,
    InvalidInput,
    SkyflowRejected,
    SkyflowUnavailable,
    SkyflowUntrusted,
    UpstreamError,
)
from .trust import untrusted_summary

__all__ = [
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
ASSERTION_LIFETIME = 3600  # seconds; the SDK signs exp = now + 60 min
DEFAULT_TOKEN_LIFETIME = 3600.0  # Skyflow's access tokens live 60 min
CTX_KEY = re.compile(r"[A-Za-z0-9_]+")
MAX_CTX_BYTES = 8 * 1024  # ctx becomes part of cache keys; keep it bounded
_MAX_CTX_DEPTH = 8
_MAX_RESPONSE_BYTES = 1024 * 1024
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
    ``aud`` = tokenURI, ``exp`` = now + 3600 s, and ``ctx`` when given and not empty. Like the SDK
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
            if not outcome.retryable or attempt >= self.policy.max_attempts:
                break
            delay = (
                outcome.retry_after
                if outcome.retry_after is not None
                else self.policy.backoff(attempt, self._rng)
            )
            if time.monotonic() + delay >= limit:
                # sleeping would only run into the deadline
                if outcome.retry_after is not None and outcome.error is not None:
                    outcome.error.summary += (
                        f"; its Retry-After of {outcome.retry_after:g} s is past the deadline"
                    )
                break
            await asyncio.sleep(delay)

        error = outcome.error
        if error is None:  # the deadline passed before the first attempt
            error = SkyflowUnavailable("the request deadline passed before Skyflow was called")
        error.attempts = max(attempt, 1)
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
            async with asyncio.timeout(remaining):
                response = await self._http.post(url, json=body, timeout=self._timeout(remaining))
        except TimeoutError as exc:
            outcome = _Outcome(
                error=SkyflowUnavailable("Skyflow did not answer before the deadline"),
                cause=exc,
                retryable=False,
            )
        except httpx.TimeoutException as exc:
            outcome = _Outcome(
                error=SkyflowUnavailable(f"Skyflow timed out ({_kind(exc)})"),
                cause=exc,
                retryable=True,
            )
        except httpx.TransportError as exc:
            outcome = _transport_failure(exc)
        else:
            outcome = _classify(response, issued_at=time.time())
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


def _transport_failure(exc: httpx.TransportError) -> _Outcome:
    if _is_certificate_error(exc):
        # retrying cannot fix trust; say what to check instead
        return _Outcome(error=SkyflowUntrusted(untrusted_summary()), cause=exc)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.ProxyError):
        return _Outcome(error=SkyflowUnavailable(f"cannot reach Skyflow ({_kind(exc)})"), cause=exc)
    detail = str(exc) or _kind(exc)
    return _Outcome(
        error=SkyflowUnavailable(f"cannot reach Skyflow ({_kind(exc)}: {detail})"),
        cause=exc,
        retryable=True,
    )


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _classify(response: httpx.Response, *, issued_at: float) -> _Outcome:
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    if 200 <= status < 300:
        token = _parse_token(response, issued_at)
        if token is None:
            return _Outcome(
                status=status,
                request_id=request_id,
                error=SkyflowUnavailable(
                    "Skyflow returned a malformed token response",
                    status=status,
                    request_id=request_id,
                ),
            )
        return _Outcome(status=status, request_id=request_id, token=token)

    message = _error_message(response)
    if status == 429 or status >= 500:
        return _Outcome(
            status=status,
            request_id=request_id,
            error=SkyflowUnavailable(
                "Skyflow is unavailable",
                status=status,
                request_id=request_id,
                skyflow_message=message,
            ),
            retryable=True,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    error_type = SkyflowRejected if 400 <= status < 500 else SkyflowUnavailable
    return _Outcome(
        status=status,
        request_id=request_id,
        error=error_type(
            "Skyflow rejected the token request"
            if error_type is SkyflowRejected
            else "Skyflow answered unexpectedly",
            status=status,
            request_id=request_id,
            skyflow_message=message,
        ),
    )


def _parse_token(response: httpx.Response, issued_at: float) -> IssuedToken | None:
    """Read ``{"accessToken", "tokenType"}``; None when malformed (never echo the body)."""
    if len(response.content) > _MAX_RESPONSE_BYTES:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    access_token = data.get("accessToken")
    token_type = data.get("tokenType", "Bearer")
    if not isinstance(access_token, str) or not access_token.strip():
        return None
    if not isinstance(token_type, str) or not token_type:
        return None
    return IssuedToken(
        access_token=access_token,
        token_type=token_type,
        expires_at=_token_expiry(access_token, issued_at),
        issued_at=issued_at,
    )


def _token_expiry(access_token: str, issued_at: float) -> float:
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return issued_at + DEFAULT_TOKEN_LIFETIME  # opaque token: assume Skyflow's 60 min
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return issued_at + DEFAULT_TOKEN_LIFETIME


def _error_message(response: httpx.Response) -> str | None:
    """Skyflow's ``error.message``; the raw body is never used (it could echo anything)."""
    try:
        data = response.json()
    except ValueError:
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
    return max(0.0, seconds)
