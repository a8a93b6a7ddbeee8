"""``health``: whether this mount works, down to Skyflow.

Checks storage (it answers), config (present and parses) and Skyflow (a token can be
obtained). A token obtained in the last minute (by a probe or a config write) answers for
Skyflow, so frequent probes cost at most one exchange per minute per mount. HTTP 200 when
every check passes, 503 otherwise, with the details in the body.
"""

from __future__ import annotations

import datetime
import time
from functools import partial
from typing import Any

from vault_plugin_sdk.framework import (
    FieldData,
    Operation,
    OperationHandler,
    Path,
    Request,
    Response,
)

from .backend import HEALTH_CACHE_KEY, PLUGIN_VERSION, SkyflowBackend
from .client import IssuedToken
from .errors import SkyflowError
from .telemetry import HEALTH_CHECK

HEALTH_MIN_REMAINING = 60.0  # seconds a reused probe token must still be valid
# A probe token obtained less than this long ago answers for Skyflow: at most one exchange
# per mount per interval however often health is polled, and never a stale "healthy".
HEALTH_PROBE_INTERVAL = 60.0


def _check(ok: bool, message: str, **details: Any) -> dict[str, Any]:
    return {"ok": ok, "message": message, **details}


async def _health(b: SkyflowBackend, req: Request, data: FieldData) -> Response | None:
    checks: dict[str, dict[str, Any]] = {}
    try:
        await b.storage.list("roles/")
        checks["storage"] = _check(True, "storage answers")
    except Exception as exc:
        checks["storage"] = _check(False, f"storage failed: {type(exc).__name__}")

    config = None
    account = None
    try:
        config = await b.get_config()
        if config is None:
            checks["config"] = _check(False, "not configured: write the service account to config")
        else:
            account = await b.account(config)
            checks["config"] = _check(
                True,
                "config present and parses",
                version=config.version,
                client_id=account.client_id,
            )
    except SkyflowError as exc:
        checks["config"] = _check(False, f"config unusable: {exc}")
    except Exception as exc:
        checks["config"] = _check(False, f"config unreadable: {type(exc).__name__}")

    if account is None:
        checks["skyflow"] = _check(False, "not checked: no usable config")
    else:
        cached = b.cache.get(HEALTH_CACHE_KEY, min_remaining=HEALTH_MIN_REMAINING)
        age = time.time() - cached.issued_at if cached is not None else None
        if cached is not None and age is not None and age < HEALTH_PROBE_INTERVAL:
            checks["skyflow"] = _check(
                True, "a token was obtained recently", cached=True, age_seconds=int(age)
            )
        else:
            generation = (b.generations.config, 0)

            async def probe() -> IssuedToken:
                token = await b.mint(account, [], None)
                if generation == (b.generations.config, 0):
                    b.cache.put(HEALTH_CACHE_KEY, token, generation)
                return token

            try:
                # Concurrent probes share one exchange.
                await b.cache.single_flight(HEALTH_CACHE_KEY, probe)
                checks["skyflow"] = _check(True, "a token was obtained", cached=False)
            except SkyflowError as exc:
                status = getattr(exc, "status", None)
                checks["skyflow"] = _check(False, f"token exchange failed: {exc}", status=status)

    healthy = all(check["ok"] for check in checks.values())
    body = {
        "healthy": healthy,
        "checks": checks,
        "version": PLUGIN_VERSION,
        "mount": req.mount_point,
        "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return Response(data=body, status=200 if healthy else 503)


def health_paths(b: SkyflowBackend) -> list[Path]:
    """The ``health`` path."""
    return [
        Path(
            pattern="health",
            operations={
                Operation.READ: OperationHandler(
                    b.telemetry.instrument(HEALTH_CHECK, partial(_health, b)),
                    "Check storage, config and Skyflow.",
                )
            },
            help_synopsis="Whether this mount works, down to Skyflow.",
            help_description="""
            Answers 200 when storage, the config and a Skyflow token exchange all work, 503
            otherwise; the body has "healthy", per-check results under "checks", the plugin
            version and a timestamp. A token obtained within the last minute answers for
            Skyflow, so frequent probes cost at most one exchange per minute.
            """,
        )
    ]
