"""An application that takes its Skyflow bearer token from the environment.

OpenBao/Vault Agent's ``exec`` mode starts it with ``SKYFLOW_BEARER_TOKEN`` set (see
docs/applications.md) and restarts it with a fresh token when the token changes. It prints
one line when it starts: a fingerprint of the token (never the token) and when it expires,
then serves until it is stopped. Standard library only.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import signal
import sys
import threading


def describe(token: str) -> str:
    """``sha256:<first 12 hex> expires <RFC 3339>`` for a JWT, without verifying it."""
    fingerprint = hashlib.sha256(token.encode()).hexdigest()[:12]
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    expires = datetime.datetime.fromtimestamp(int(claims["exp"]), datetime.UTC)
    return f"sha256:{fingerprint} expires {expires:%Y-%m-%dT%H:%M:%SZ}"


def main() -> int:
    token = os.environ.get("SKYFLOW_BEARER_TOKEN", "")
    if not token:
        print("app_env: SKYFLOW_BEARER_TOKEN is not set", file=sys.stderr)
        return 1
    print(f"app_env: started with token {describe(token)}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A real application would serve requests with the token here.
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
