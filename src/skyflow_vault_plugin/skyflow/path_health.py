"""``health``: whether this mount works, down to Skyflow.

Checks storage (it answers), config (present and parses) and Skyflow (a token can be
obtained). A token obtained in the last minute (by a probe or a config write) answers for
Skyflow, so frequent probes cost at most one exchange per minute per mount. HTTP 200 when
every check passes, 503 otherwise, with the details in the body.

For people and for load balancers, as Vault's ``sys/health`` does it: an unhealthy answer
carries ``errors`` (one line per failed check, naming the fix) next to ``data``, which the
CLI prints (it shows only ``errors`` for a non-2xx answer), and the ``unhealthy_code`` query
parameter changes its status (``unhealthy_code=200``: the CLI then shows the whole body, the
reasons as warnings).
"""

from __future__ import annotations

import datetime
import time
from functools import partial
from typing import Any

from vault_plugin_sdk import framework

from .errors import SkyflowError, SkyflowRejected
from .mount import HEALTH_CACHE_KEY, PLUGIN_VERSION, MountState
from .responses import IssuedToken
from .telemetry import HEALTH_CHECK

HEALTH_MIN_REMAINING = 60.0  # seconds a reused probe token must still be valid
# A probe token obtained less than this long ago answers for Skyflow: at most one exchange
# per mount per interval however often health is polled, and never a stale "healthy".
HEALTH_PROBE_INTERVAL = 60.0
UNHEALTHY_CODE = 503


def _status_code(value: int) -> None:
    if not 200 <= value <= 599 or value == 204:
        raise ValueError("must be an HTTP status from 200 to 599 (not 204, which has no body)")


HEALTH_FIELDS = {
    "unhealthy_code": framework.Field(
        framework.FieldType.INT,
        "HTTP status answered when a check fails (as sys/health's sealedcode, standbycode...): "
        "e.g. 200 to read the full body with the CLI, or 429 for a load balancer that treats "
        "503 specially.",
        default=UNHEALTHY_CODE,
        validator=_status_code,
    ),
}

_FIX_STORAGE = "the server's storage is failing: see the server log"
_FIX_CONFIG = "write the mount's config again with working credentials"
# The upstream error's own text already names the category and what to check; these add
# only what the health check knows on top of it.
_FIX_REJECTED = "once the key is active in Skyflow, write the config again"
_FIX_UNAVAILABLE = "see docs/operations.md, Troubleshooting"


def _check(ok: bool, message: str, **details: Any) -> dict[str, Any]:
    return {"ok": ok, "message": message, **details}


async def _health(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    checks: dict[str, dict[str, Any]] = {}
    # What an operator does about a failed check, when its message does not say it already.
    fixes: dict[str, str] = {}
    try:
        await b.storage.list("roles/")
        checks["storage"] = _check(True, "storage answers")
    except Exception as exc:
        checks["storage"] = _check(False, f"storage failed: {type(exc).__name__}")
        fixes["storage"] = _FIX_STORAGE

    config = None
    account = None
    try:
        config = await b.get_config()
        if config is None:
            checks["config"] = _check(False, "not configured: write the service account to config")
        else:
            account = await b.account(config, req.mount_point)
            checks["config"] = _check(
                True,
                "config present and parses",
                version=config.version,
                client_id=account.client_id,
            )
    except SkyflowError as exc:
        checks["config"] = _check(False, f"config unusable: {exc}")
        fixes["config"] = _FIX_CONFIG
    except Exception as exc:
        checks["config"] = _check(False, f"config unreadable: {type(exc).__name__}")
        fixes["config"] = _FIX_STORAGE

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
                await b.cache.single_flight(HEALTH_CACHE_KEY, probe, generation)
                checks["skyflow"] = _check(True, "a token was obtained", cached=False)
            except SkyflowError as exc:
                status = getattr(exc, "status", None)
                checks["skyflow"] = _check(False, str(exc), status=status)
                rejected = isinstance(exc, SkyflowRejected)
                fixes["skyflow"] = _FIX_REJECTED if rejected else _FIX_UNAVAILABLE

    healthy = all(check["ok"] for check in checks.values())
    # "not checked" follows from an earlier failure, which is the one to fix.
    reasons = [
        f"{name}: {check['message']}" + (f"; {fixes[name]}" if name in fixes else "")
        for name, check in checks.items()
        if not check["ok"] and not check["message"].startswith("not checked")
    ]
    body = {
        "healthy": healthy,
        "checks": checks,
        "version": PLUGIN_VERSION,
        "mount": req.mount_point,
        "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if healthy:
        return framework.Response(data=body, status=200)
    code: int = data.get("unhealthy_code")
    if code >= 400:
        # The CLI (Vault's API client) shows only "errors" for a non-2xx answer.
        return framework.Response(data=body, status=code, errors=reasons)
    return framework.Response(data=body, status=code, warnings=reasons)


def health_paths(b: MountState) -> list[framework.Path]:
    """The ``health`` path."""
    return [
        framework.Path(
            pattern="health",
            fields=HEALTH_FIELDS,
            operations={
                framework.Operation.READ: framework.OperationHandler(
                    b.telemetry.instrument(HEALTH_CHECK, partial(_health, b)),
                    "Check storage, config and Skyflow.",
                )
            },
            help_synopsis="Whether this mount works, down to Skyflow.",
            help_description="""
            Answers 200 when storage, the config and a Skyflow token exchange all work, 503
            (or unhealthy_code) otherwise; the body has "healthy", per-check results under
            "checks", the plugin version and a timestamp, and when unhealthy "errors" with
            one line per failed check. A token obtained within the last minute answers for
            Skyflow (its age in "age_seconds"), so frequent probes cost at most one exchange
            per minute.
            """,
        )
    ]
