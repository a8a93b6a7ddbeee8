"""Reading ``creds`` through a real OpenBao, and what a 200 answer issued, for the e2e suite.

Access tokens are kept only as their SHA-256 (:class:`Issued`), so no assertion can print one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from skyflow_devtools.client import BaoClient, fail_status
from skyflow_emulator.process import EmulatorAdmin
from tests.stack import Stack


@dataclass(frozen=True)
class Issued:
    """A ``creds`` answer with the token replaced by its hash and its verified claims."""

    token_sha256: str
    claims: dict[str, Any]
    token_type: str
    expires_in: int
    expires_at: str
    response_keys: list[str]
    warnings: list[str]


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def decode_token(stack: Stack, public_key: str, token: str) -> dict[str, Any]:
    """Verify an emulator-issued access token (RS256, audience = the emulator's URL)."""
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key,
        algorithms=["RS256"],
        audience=stack.emulator.url.rstrip("/"),
        options={"require": ["sub", "exp", "iat", "scope"]},
    )
    return claims


def issued(stack: Stack, public_key: str, response: httpx.Response) -> Issued:
    """Check a 200 ``creds`` answer and return it without the raw token."""
    if response.status_code != 200:
        fail_status(response, 200)
    body = response.json()
    data = body["data"]
    token = data["access_token"]
    assert isinstance(token, str)
    assert token
    return Issued(
        token_sha256=sha256(token),
        claims=decode_token(stack, public_key, token),
        token_type=data["token_type"],
        expires_in=data["expires_in"],
        expires_at=data["expires_at"],
        response_keys=sorted(data),
        warnings=list(body.get("warnings") or []),
    )


def read_creds(
    client: BaoClient, mount: str, role: str, ctx: Any = None, *, method: str | None = None
) -> httpx.Response:
    """``creds/<role>``: GET with ``ctx`` in the query, or another ``method`` with it in the
    JSON body; without ``method``, a map ``ctx`` is POSTed and anything else is a GET."""
    if method is None:
        method = "POST" if isinstance(ctx, dict) else "GET"
    if method == "GET":
        params = {"ctx": ctx} if ctx is not None else None
        return client.request("GET", f"{mount}/creds/{role}", params=params)
    body = {"ctx": ctx} if ctx is not None else {}
    return client.request(method, f"{mount}/creds/{role}", json=body)


def calls(admin: EmulatorAdmin, client_id: str) -> int:
    """Token calls the emulator saw from one service account."""
    by_client: dict[str, dict[str, int]] = admin.stats()["by_client"]
    return by_client.get(client_id, {}).get("calls", 0)
