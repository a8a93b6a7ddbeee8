"""Strict verification of a token request, as Skyflow's token endpoint performs it.

The emulator is deliberately pickier than it needs to be: anything the official SDK would not
send is refused, so a drift in our own client shows up as a failing test.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from .state import Account, EmulatorState

__all__ = [
    "CLOCK_SKEW",
    "GRANT_TYPE",
    "MAX_ASSERTION_LIFETIME",
    "Rejected",
    "VerifiedRequest",
    "peek_client_id",
    "verify_token_request",
]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 30
_SCOPE = re.compile(r"role:[^\s:]+(?: role:[^\s:]+)*")
_CTX_KEY = re.compile(r"[A-Za-z0-9_]+")
_KNOWN_BODY_KEYS = frozenset(
    {
        "grant_type",
        "assertion",
        "scope",
        "subject_token",
        "subject_token_type",
        "requested_token_use",
    }
)
# token exchange (delegation/impersonation) is not emulated; the SDK sends these as absent
_UNSUPPORTED_BODY_KEYS = ("subject_token", "subject_token_type", "requested_token_use")


class Rejected(Exception):
    """The request is refused with ``status`` and ``message`` (Skyflow's error shape)."""

    def __init__(self, status: int, message: str, client_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.client_id = client_id


@dataclass(frozen=True)
class VerifiedRequest:
    """A token request that passed every check."""

    account: Account
    header: dict[str, Any]
    claims: dict[str, Any]
    scope: str | None
    role_ids: list[str]


def peek_client_id(body: object) -> str | None:
    """Best-effort client ID of a request, for counters; never trusted for anything else."""
    if not isinstance(body, Mapping):
        return None
    assertion = body.get("assertion")
    if not isinstance(assertion, str):
        return None
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss = claims.get("iss")
    return iss if isinstance(iss, str) else None


def verify_token_request(
    state: EmulatorState, body: object, now: float | None = None
) -> VerifiedRequest:
    """Check a parsed JSON request body; raise :class:`Rejected` on the first problem."""
    current = time.time() if now is None else now
    if not isinstance(body, dict):
        raise Rejected(400, "Request body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN_BODY_KEYS)
    if unknown:
        raise Rejected(400, f"Unknown request field {unknown[0]!r}")
    for key in _UNSUPPORTED_BODY_KEYS:
        if body.get(key) is not None:
            raise Rejected(400, f"{key} is not supported for service-account tokens")
    if body.get("grant_type") != GRANT_TYPE:
        raise Rejected(400, f"Invalid grant_type: must be {GRANT_TYPE!r}")
    assertion = body.get("assertion")
    if not isinstance(assertion, str) or not assertion:
        raise Rejected(400, "assertion is required")
    scope, role_ids = _scope(body.get("scope"))

    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Rejected(400, "assertion is not a valid JWT") from None
    if header.get("alg") != "RS256":
        raise Rejected(400, "assertion must be signed with RS256")
    iss = unverified.get("iss")
    if not isinstance(iss, str) or not iss:
        raise Rejected(400, "assertion claim iss is required")
    account = state.accounts.get(iss)
    if account is None:
        raise Rejected(401, "Invalid credentials: unknown client ID")
    claims = _verified_claims(assertion, account, unverified, current)
    if "ctx" in claims:
        _check_ctx(claims["ctx"], iss)
    return VerifiedRequest(
        account=account, header=dict(header), claims=claims, scope=scope, role_ids=role_ids
    )


def _scope(scope: object) -> tuple[str | None, list[str]]:
    if scope is None:  # the SDK sends "scope": null when no role IDs are asked for
        return None, []
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise Rejected(400, "Invalid scope: expected 'role:<id>' entries separated by one space")
    return scope, [part.removeprefix("role:") for part in scope.split(" ")]


def _verified_claims(
    assertion: str, account: Account, unverified: Mapping[str, Any], now: float
) -> dict[str, Any]:
    cid = account.client_id
    # the key claim selects the verification key, so it is checked before the signature
    public_key = account.public_key_for(unverified.get("key"))
    if public_key is None:
        raise Rejected(401, "Invalid credentials: key ID does not match the client", cid)
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion,
            public_key,
            algorithms=["RS256"],
            options={"require": ["exp"], "verify_aud": False},
            leeway=CLOCK_SKEW,
        )
    except jwt.MissingRequiredClaimError:
        raise Rejected(400, "assertion claim exp is required", cid) from None
    except jwt.InvalidSignatureError:
        raise Rejected(
            401, "Invalid credentials: assertion signature does not verify", cid
        ) from None
    except jwt.ExpiredSignatureError:
        raise Rejected(401, "Invalid credentials: assertion has expired", cid) from None
    except jwt.PyJWTError as exc:
        raise Rejected(400, f"Invalid assertion: {exc}", cid) from None
    if claims.get("sub") != cid:
        raise Rejected(401, "Invalid credentials: sub must equal iss (the client ID)", cid)
    aud = claims.get("aud")
    if not isinstance(aud, str) or aud != account.token_uri:
        raise Rejected(401, "Invalid credentials: aud must be the account's token URI", cid)
    exp = claims["exp"]
    if exp > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
        raise Rejected(400, "assertion exp must be at most 60 minutes ahead", cid)
    return claims


def _check_ctx(ctx: object, cid: str) -> None:
    if isinstance(ctx, bool | int):
        return
    if isinstance(ctx, float):
        if math.isfinite(ctx):
            return
    elif isinstance(ctx, str):
        if ctx.strip():
            return
        raise Rejected(400, "ctx must not be empty (clients drop an empty ctx)", cid)
    elif isinstance(ctx, dict):
        if not ctx:
            raise Rejected(400, "ctx must not be empty (clients drop an empty ctx)", cid)
        for key in ctx:
            if not _CTX_KEY.fullmatch(key):
                raise Rejected(400, "Invalid ctx: map keys must match ^[a-zA-Z0-9_]+$", cid)
        return
    raise Rejected(400, "Invalid ctx: must be a string, number, boolean or map", cid)
