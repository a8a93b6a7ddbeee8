"""The Skyflow token exchange: send the signed assertion and trade it for a bearer token.

:mod:`.assertion` builds the request body and :mod:`.responses` reads the reply; this module
owns the HTTP side: one pooled ``httpx.AsyncClient`` per mount, bounded timeouts, a total
deadline, retries with exponential backoff and full jitter on transient failures, the mount's
pause after a rate limit, and Skyflow's status, message and request id kept in the raised
:mod:`.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias

import httpx

from .. import __version__
from .assertion import GRANT_TYPE, build_assertion, format_scope
from .credentials import ServiceAccount, token_endpoint
from .errors import (
    BUSY,
    MALFORMED,
    RATE_LIMITED,
    TIMED_OUT,
    UNREACHABLE,
    SkyflowUnavailable,
    SkyflowUntrusted,
    UpstreamError,
)
from .responses import MAX_MOUNT_BACKOFF, IssuedToken, Outcome, read_reply
from .trust import untrusted_summary

__all__ = ["AttemptHook", "ExchangePolicy", "TokenClient"]

_DEFAULT_429_PAUSE = 1.0


def _pause_clock() -> float:
    """The clock of the mount's rate-limit pause (a seam for tests: patching time.monotonic
    itself would move the event loop's clock too)."""
    return time.monotonic()


_VAULT_REQUEST_LIMIT = 90.0

AttemptHook: TypeAlias = Callable[[int | None, str | None, float], None]
"""``on_attempt(status, request_id, elapsed_seconds)``; status is None when no response came."""

_log = logging.getLogger(__name__)


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

    def _pause(self, outcome: Outcome) -> None:
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

        outcome = Outcome()
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

    async def _attempt(self, url: str, body: Mapping[str, str], remaining: float) -> Outcome:
        started = time.monotonic()
        try:
            # httpx's timeouts are per operation; asyncio.timeout bounds the whole attempt
            async with (
                asyncio.timeout(remaining),
                self._http.stream(
                    "POST", url, json=body, timeout=self._timeout(remaining)
                ) as response,
            ):
                outcome = await read_reply(response)
        except TimeoutError as exc:
            outcome = Outcome(
                error=SkyflowUnavailable(
                    "no answer before the request deadline", category=TIMED_OUT
                ),
                cause=exc,
            )
        except httpx.PoolTimeout as exc:
            # Not Skyflow's slowness: every pooled connection of this mount stayed busy.
            outcome = Outcome(
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

    def _report(self, outcome: Outcome, elapsed: float) -> None:
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
) -> Outcome:
    return Outcome(
        error=error_type(category=category, detail=detail),
        cause=exc,
        retryable=retryable,
    )


def _transport_failure(exc: httpx.TransportError) -> Outcome:
    if _is_certificate_error(exc):
        # retrying cannot fix trust; the message names the setting that does
        return Outcome(
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
