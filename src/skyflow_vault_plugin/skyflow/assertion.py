"""The signed assertion and the scope that Skyflow exchanges for a bearer token.

The request is the one the official Skyflow SDKs send (same claims, header, body and scope
format; ``tests/skyflow/test_sdk_conformance.py`` pins this); :mod:`.client` sends it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jwt

from .credentials import ServiceAccount
from .ctx import validate_ctx
from .errors import InvalidInput, short_repr

__all__ = ["ASSERTION_LIFETIME", "GRANT_TYPE", "build_assertion", "format_scope"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The assertion is a bearer credential for minting tokens until it expires, so it lives only
# as long as one exchange needs. The SDKs sign exp = now + 60 min; Skyflow documents no
# minimum lifetime and only checks that exp lies ahead. One exchange reuses its assertion
# across retries for at most the request deadline (below Vault's 90 s limit), so 5 minutes
# leaves over 3 minutes for the Vault host's clock to run behind Skyflow's.
ASSERTION_LIFETIME = 300  # seconds


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
            raise InvalidInput("role_ids", f"invalid role ID {short_repr(role_id)}")
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
