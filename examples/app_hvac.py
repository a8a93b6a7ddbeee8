"""An application that gets Skyflow bearer tokens from Vault/OpenBao with hvac.

It never holds the Skyflow service-account key: it reads ``<mount>/creds/<role>`` and keeps
the token until ``expires_in`` says it is about to run out, then reads again. Run it with a
Vault token whose policy allows that path (see ``examples/policies/``)::

    export BAO_ADDR=http://127.0.0.1:8200 BAO_TOKEN=...      # or VAULT_ADDR / VAULT_TOKEN
    python examples/app_hvac.py --mount skyflow/insurance --role producer --once

How refreshing works with the plugin: the plugin itself reuses a token while it stays valid
for at least the role's ``min_remaining_ttl`` (default 10 minutes) and mints a new one below
that. So refresh when the remaining lifetime drops below a margin *smaller* than
``min_remaining_ttl`` (here 5 minutes): the next read then gets a fresh token. A larger margin
would keep getting the same token back.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import hvac
from hvac.exceptions import Forbidden


@dataclass(frozen=True)
class Token:
    """A Skyflow bearer token and when it stops being usable (monotonic clock)."""

    value: str
    token_type: str
    expires_in: int
    expires_at: str
    valid_until: float


class SkyflowTokenSource:
    """Hands out a valid Skyflow token, reading a new one from Vault when it runs low.

    Thread-safe: concurrent callers share one read. ``ctx`` (a string or a map) is sent as
    the plugin's ``ctx`` field; a map needs POST, so it is sent in the request body.
    """

    def __init__(
        self,
        client: hvac.Client,
        mount: str,
        role: str,
        *,
        ctx: str | Mapping[str, Any] | None = None,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._path = f"{mount.strip('/')}/creds/{role}"
        self._ctx = ctx
        self._margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Token | None = None
        self.reads = 0

    def token(self) -> Token:
        """A token with more than ``refresh_margin`` seconds left (or the freshest available)."""
        with self._lock:
            current = self._token
            if current is None or current.valid_until - self._clock() <= self._margin:
                self._token = current = self._fetch()
            return current

    def _fetch(self) -> Token:
        before = self._clock()
        if self._ctx is None:
            response = self._client.read(self._path)
        else:
            response = self._client.write_data(self._path, data={"ctx": self._ctx})
        self.reads += 1
        if not response or "data" not in response:
            raise RuntimeError(f"{self._path} returned no data")
        data = response["data"]
        expires_in = int(data["expires_in"])
        return Token(
            value=str(data["access_token"]),
            token_type=str(data.get("token_type", "Bearer")),
            expires_in=expires_in,
            expires_at=str(data["expires_at"]),
            # Count from before the request: never believe the token lives longer than it does.
            valid_until=before + expires_in,
        )


def claims_of(token: str) -> dict[str, Any]:
    """The JWT payload, decoded for display only (the application does not verify it)."""
    payload = token.split(".")[1]
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded if isinstance(decoded, dict) else {}


def _client_from_env() -> hvac.Client:
    url = os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR")
    token = os.environ.get("VAULT_TOKEN") or os.environ.get("BAO_TOKEN")
    if not url or not token:
        raise SystemExit("set BAO_ADDR and BAO_TOKEN (or VAULT_ADDR and VAULT_TOKEN)")
    return hvac.Client(url=url, token=token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mount", default="skyflow/insurance")
    parser.add_argument("--role", default="producer")
    parser.add_argument("--ctx", help='a string, or a JSON object such as \'{"user_id": "u1"}\'')
    parser.add_argument("--margin", type=float, default=300.0, help="refresh margin, seconds")
    parser.add_argument("--once", action="store_true", help="get one token and exit")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between uses")
    args = parser.parse_args(argv)
    ctx: str | dict[str, Any] | None = args.ctx
    if args.ctx and args.ctx.lstrip().startswith("{"):
        ctx = json.loads(args.ctx)

    source = SkyflowTokenSource(
        _client_from_env(), args.mount, args.role, ctx=ctx, refresh_margin=args.margin
    )
    while True:
        try:
            token = source.token()
        except Forbidden:
            print(f"permission denied for {args.mount}/creds/{args.role}", file=sys.stderr)
            return 1
        claims = claims_of(token.value)
        fingerprint = hashlib.sha256(token.value.encode()).hexdigest()[:12]
        # Use the token here, e.g. headers={"Authorization": f"Bearer {token.value}"}.
        print(
            f"token sha256:{fingerprint} for {claims.get('sub')} scope={claims.get('scope')} "
            f"expires_at={token.expires_at} (reads from Vault so far: {source.reads})",
            flush=True,
        )
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
