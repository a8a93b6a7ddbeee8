"""The emulator's Starlette app: Skyflow's token endpoint plus an admin API.

Routes:

* ``POST /v1/auth/sa/oauth/token`` -- the token endpoint (see :mod:`.verify`);
* ``POST /_emulator/accounts`` -- create a service account, answers its credentials JSON
  (body optional: ``{"client_name": ...}``); ``GET`` lists accounts (no keys);
* ``POST /_emulator/accounts/{client_id}/keys`` -- a new key for the account (same clientID,
  new keyID), answers the new credentials JSON; the old key stays valid until
  ``DELETE /_emulator/accounts/{client_id}/keys/{key_id}`` revokes it;
* ``POST /_emulator/faults`` -- set the fault knobs (:class:`.state.Faults` fields, JSON);
  ``DELETE`` resets them;
* ``GET /_emulator/stats`` -- counters and recorded requests; ``DELETE`` zeroes them;
* ``POST /_emulator/reset`` -- reset faults and stats (accounts stay);
* ``POST /_emulator/settings`` -- ``{"token_lifetime": seconds}``;
* ``GET /_emulator/public-key`` -- PEM key verifying the issued access tokens;
* ``GET /_emulator/health``.

Every response carries an ``X-Request-Id`` header; errors use Skyflow's shape
``{"error": {"grpc_code", "http_code", "http_status", "message", "details"}}``.
The admin API has no authentication: the emulator is for tests and demos on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from http import HTTPStatus
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .accounts import TOKEN_PATH, create_service_account, rotate_key
from .state import EmulatorState, Faults, RecordedRequest, Rejection
from .verify import Rejected, VerifiedRequest, peek_client_id, verify_token_request

__all__ = ["create_app", "error_body"]

MAX_BODY_BYTES = 64 * 1024
_GRPC_CODES = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    405: 12,  # UNIMPLEMENTED
    409: 6,  # ALREADY_EXISTS
    413: 3,
    415: 3,
    429: 8,  # RESOURCE_EXHAUSTED
    500: 13,  # INTERNAL
    501: 12,
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}
_FAULT_FIELDS = {
    "latency": (int, float),
    "fail_status": (int,),
    "fail_count": (int,),
    "retry_after": (int, float),
    "reject": (bool,),
    "error_message": (str,),
    "error_repeat": (int,),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Skyflow's error JSON for ``status``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {
        "error": {
            "grpc_code": _GRPC_CODES.get(status, 2),  # 2 = UNKNOWN
            "http_code": status,
            "http_status": phrase,
            "message": message,
            "details": [],
        }
    }


class _RequestIdMiddleware:
    """Give every request an id (``request.state.request_id``) and every response the header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("X-Request-Id", request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


def _request_id(request: Request) -> str:
    request_id = getattr(request.state, "request_id", None)
    return request_id if isinstance(request_id, str) else uuid.uuid4().hex


def _error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    all_headers = {"X-Request-Id": _request_id(request), **(headers or {})}
    return JSONResponse(error_body(status, message), status_code=status, headers=all_headers)


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def _base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


async def _json_body(request: Request) -> object:
    """Parsed JSON body; raises HTTPException(400) when it is not JSON."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, "Request body too large")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "Request body must be JSON") from None


# ----------------------------------------------------------------------------- token endpoint


async def token(request: Request) -> Response:
    """Skyflow's ``POST /v1/auth/sa/oauth/token``."""
    state = _state(request)
    request_id = _request_id(request)
    try:
        body: object = await _json_body(request)
    except HTTPException as exc:
        body = exc
    client_hint = peek_client_id(body)
    state.record_call(client_hint)

    if state.faults.latency > 0:
        await asyncio.sleep(state.faults.latency)
    fault = state.take_fault()
    if fault is not None:
        status, retry_after = fault
        message = "Invalid credentials" if status == 401 else "Injected fault"
        message = (state.faults.error_message or message) * (state.faults.error_repeat or 1)
        state.record_failure(Rejection(request_id, status, message, client_hint))
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return _error(request, status, message, headers)

    try:
        if isinstance(body, HTTPException):
            raise Rejected(body.status_code, body.detail)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Rejected(400, "Content-Type must be application/json")
        verified = verify_token_request(state, body)
    except Rejected as exc:
        state.record_failure(Rejection(request_id, exc.status, exc.message, exc.client_id))
        return _error(request, exc.status, exc.message)

    access_token = _issue(state, verified, _base_url(request))
    assert isinstance(body, dict)  # verify_token_request checked it
    state.record_success(
        RecordedRequest(
            request_id=request_id,
            client_id=verified.account.client_id,
            header=verified.header,
            claims=verified.claims,
            scope=verified.scope,
            role_ids=verified.role_ids,
            ctx=verified.claims.get("ctx"),
            has_ctx="ctx" in verified.claims,
            body_keys=sorted(body),
        )
    )
    return JSONResponse({"accessToken": access_token, "tokenType": "Bearer"})


def _issue(state: EmulatorState, verified: VerifiedRequest, base_url: str) -> str:
    """Sign an access token: iss = aud = the emulator's base URL, sub = the client ID."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": base_url,
        "sub": verified.account.client_id,
        "aud": base_url,
        "iat": now,
        "exp": now + state.token_lifetime,
        "scope": verified.role_ids,
        "jti": uuid.uuid4().hex,
    }
    if "ctx" in verified.claims:
        claims["ctx"] = verified.claims["ctx"]
    return jwt.encode(
        claims, state.signing_key, algorithm="RS256", headers={"kid": state.signing_key_id}
    )


# ---------------------------------------------------------------------------------- admin API


async def create_account(request: Request) -> Response:
    """Create a service account; answer its credentials JSON."""
    body = await _json_body(request)
    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - {"client_name"}:
        raise HTTPException(400, 'Body must be {"client_name": <string>} or empty')
    name = body.get("client_name", "emulated-service-account")
    if not isinstance(name, str) or not name:
        raise HTTPException(400, "client_name must be a non-empty string")
    creds = create_service_account(_state(request), base_url=_base_url(request), client_name=name)
    return JSONResponse(creds, status_code=201)


async def list_accounts(request: Request) -> Response:
    """List the accounts (identifiers only)."""
    accounts = [
        {
            "clientID": a.client_id,
            "clientName": a.client_name,
            "keyID": a.key_id,
            "keyIDs": a.key_ids,
            "tokenURI": a.token_uri,
        }
        for a in _state(request).accounts.values()
    ]
    return JSONResponse({"accounts": accounts})


async def new_key(request: Request) -> Response:
    """A new key for an account (rotation); answer the new credentials JSON."""
    client_id = request.path_params["client_id"]
    try:
        creds = rotate_key(_state(request), client_id)
    except KeyError:
        raise HTTPException(404, f"No account with client ID {client_id!r}") from None
    return JSONResponse(creds, status_code=201)


async def revoke_key(request: Request) -> Response:
    """Revoke one key of an account: assertions signed with it are refused from now on."""
    state = _state(request)
    client_id, key_id = request.path_params["client_id"], request.path_params["key_id"]
    account = state.accounts.get(client_id)
    if account is None:
        raise HTTPException(404, f"No account with client ID {client_id!r}")
    try:
        state.add_account(account.without_key(key_id))
    except KeyError:
        raise HTTPException(404, f"The account has no key {key_id!r}") from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    return JSONResponse({"clientID": client_id, "keyIDs": state.accounts[client_id].key_ids})


async def set_faults(request: Request) -> Response:
    """Replace the fault knobs."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise HTTPException(400, "Body must be a JSON object of fault fields")
    values: dict[str, Any] = {}
    for key, value in body.items():
        kinds = _FAULT_FIELDS.get(key)
        if kinds is None:
            raise HTTPException(400, f"Unknown fault field {key!r}")
        if value is None and key not in ("latency", "reject"):
            values[key] = None
            continue
        if isinstance(value, bool) != (kinds == (bool,)) or not isinstance(value, kinds):
            raise HTTPException(400, f"Fault field {key!r} has the wrong type")
        values[key] = value
    faults = Faults(**values)
    try:
        _state(request).set_faults(faults)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return JSONResponse(faults.as_dict())


async def reset_faults(request: Request) -> Response:
    """Back to a healthy emulator."""
    state = _state(request)
    state.reset_faults()
    return JSONResponse(state.faults.as_dict())


async def stats(request: Request) -> Response:
    """Counters, recorded requests and faults."""
    return JSONResponse(_state(request).snapshot())


async def reset_stats(request: Request) -> Response:
    """Zero the counters."""
    state = _state(request)
    state.reset_stats()
    return JSONResponse(state.snapshot())


async def reset(request: Request) -> Response:
    """Reset faults and counters; accounts stay."""
    state = _state(request)
    state.reset_faults()
    state.reset_stats()
    return JSONResponse(state.snapshot())


async def settings(request: Request) -> Response:
    """Change settings: ``{"token_lifetime": seconds}``."""
    body = await _json_body(request)
    if not isinstance(body, dict) or set(body) - {"token_lifetime"}:
        raise HTTPException(400, 'Body must be {"token_lifetime": <seconds>}')
    state = _state(request)
    if "token_lifetime" in body:
        lifetime = body["token_lifetime"]
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 1:
            raise HTTPException(400, "token_lifetime must be a positive integer")
        state.token_lifetime = lifetime
    return JSONResponse({"token_lifetime": state.token_lifetime})


async def public_key(request: Request) -> Response:
    """The PEM public key that verifies issued access tokens."""
    return PlainTextResponse(_state(request).public_key_pem(), media_type="application/x-pem-file")


async def health(request: Request) -> Response:
    """Liveness."""
    return JSONResponse({"status": "ok", "accounts": len(_state(request).accounts)})


# ----------------------------------------------------------------------------------- handlers


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    return _error(request, exc.status_code, str(exc.detail), headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # a generic message: no stack trace or internals to the client
    return _error(request, 500, "Internal error")


def create_app(state: EmulatorState | None = None) -> Starlette:
    """Build the emulator app around ``state`` (a new one when omitted)."""
    routes = [
        Route(TOKEN_PATH, token, methods=["POST"]),
        Route("/_emulator/accounts", create_account, methods=["POST"]),
        Route("/_emulator/accounts", list_accounts, methods=["GET"]),
        Route("/_emulator/accounts/{client_id}/keys", new_key, methods=["POST"]),
        Route("/_emulator/accounts/{client_id}/keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/_emulator/faults", set_faults, methods=["POST"]),
        Route("/_emulator/faults", reset_faults, methods=["DELETE"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/stats", reset_stats, methods=["DELETE"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/settings", settings, methods=["POST"]),
        Route("/_emulator/public-key", public_key, methods=["GET"]),
        Route("/_emulator/health", health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_RequestIdMiddleware)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.emulator = state if state is not None else EmulatorState()
    return app
