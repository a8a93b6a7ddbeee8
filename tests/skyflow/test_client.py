"""The token exchange against the emulator app, in-process (httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults
from skyflow_vault_plugin.skyflow.client import (
    ASSERTION_LIFETIME,
    GRANT_TYPE,
    ExchangePolicy,
    IssuedToken,
    TokenClient,
    build_assertion,
    canonical_ctx,
    format_scope,
    validate_ctx,
)
from skyflow_vault_plugin.skyflow.credentials import ServiceAccount, parse_credentials
from skyflow_vault_plugin.skyflow.errors import (
    InvalidContext,
    InvalidInput,
    SkyflowRejected,
    SkyflowUnavailable,
    UpstreamError,
    safe_text,
)

FAST = ExchangePolicy(deadline=5.0, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def account(creds: dict[str, str]) -> ServiceAccount:
    return parse_credentials(creds)


pytestmark = pytest.mark.usefixtures("fresh_emulator")  # a clean emulator for every test


@pytest.fixture
async def client(emulator: InProcessEmulator) -> AsyncIterator[TokenClient]:
    async with TokenClient(FAST, transport=emulator.transport()) as token_client:
        yield token_client


def _public_key(account: ServiceAccount) -> Any:
    return account.private_key.public_key()


# ------------------------------------------------------------------------------ assertion


def test_assertion_claims_and_header(account: ServiceAccount) -> None:
    now = 1_700_000_000.7
    assertion = build_assertion(account, now=now)
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "typ": "JWT"}
    claims = jwt.decode(
        assertion,
        _public_key(account),
        algorithms=["RS256"],
        audience=account.token_uri,
        options={"verify_exp": False},
    )
    assert claims == {
        "iss": account.client_id,
        "key": account.key_id,
        "aud": account.token_uri,
        "sub": account.client_id,
        "exp": 1_700_000_000 + ASSERTION_LIFETIME,
    }
    # short-lived on purpose: the SDK signs 60 minutes, a leaked assertion would mint that long
    assert ASSERTION_LIFETIME == 300
    # the SDK's claim order, so the signed bytes look alike
    payload = json.loads(jwt.utils.base64url_decode(assertion.split(".")[1]))
    assert list(payload) == ["iss", "key", "aud", "sub", "exp"]


@pytest.mark.parametrize(
    "ctx",
    ["user_42", {"user_id": "u1", "tier": 3, "nested": {"a-b": [1, None]}}, 7, 2.5, True, False],
)
def test_assertion_carries_ctx(account: ServiceAccount, ctx: Any) -> None:
    claims = jwt.decode(build_assertion(account, ctx), options={"verify_signature": False})
    assert claims["ctx"] == ctx


@pytest.mark.parametrize("ctx", [None, "", "   ", {}])
def test_empty_ctx_dropped(account: ServiceAccount, ctx: Any) -> None:
    claims = jwt.decode(build_assertion(account, ctx), options={"verify_signature": False})
    assert "ctx" not in claims
    assert validate_ctx(ctx) is None
    assert canonical_ctx(ctx) == ""


@pytest.mark.parametrize(
    "ctx",
    [
        {"bad-key": 1},
        {"bad key": 1},
        {"trailing\n": 1},
        {"": 1},
        {1: "x"},
        {"ok": float("nan")},
        {"ok": object()},
        ["a"],
        float("inf"),
        b"bytes",
        {"k": "x" * 9000},
    ],
)
def test_bad_ctx_refused(account: ServiceAccount, ctx: Any) -> None:
    with pytest.raises(InvalidContext) as info:
        validate_ctx(ctx)
    assert info.value.field == "ctx"
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidContext):
        build_assertion(account, ctx)


def test_deep_ctx_refused() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(10):
        deep = {"k": deep}
    with pytest.raises(InvalidContext):
        validate_ctx(deep)


def test_canonical_ctx_is_stable() -> None:
    assert canonical_ctx({"b": 1, "a": {"d": 2, "c": 3}}) == canonical_ctx(
        {"a": {"c": 3, "d": 2}, "b": 1}
    )
    assert canonical_ctx({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert canonical_ctx("user") == '"user"'
    assert canonical_ctx(5) != canonical_ctx("5")


def test_format_scope() -> None:
    assert format_scope([]) is None
    assert format_scope(()) is None
    assert format_scope(["a1"]) == "role:a1"
    assert format_scope(["a1", "b2"]) == "role:a1 role:b2"
    for bad in (["a b"], [""], ["ok", " x"]):
        with pytest.raises(InvalidInput) as info:
            format_scope(bad)
        assert info.value.field == "role_ids"
    with pytest.raises(TypeError):
        format_scope("a1")


# --------------------------------------------------------------------------------- results


def test_issued_token_repr_and_expiry() -> None:
    token = IssuedToken("eyJsecret.payload.sig", "Bearer", expires_at=1000.0, issued_at=400.0)
    assert "secret" not in repr(token)
    assert token.expires_in(now=900.0) == 100.0
    assert token.expires_in(now=2000.0) == 0.0


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="90"):
        ExchangePolicy(deadline=90)
    with pytest.raises(ValueError, match="max_attempts"):
        ExchangePolicy(max_attempts=0)
    with pytest.raises(ValueError, match="connect_timeout"):
        ExchangePolicy(connect_timeout=0)
    policy = ExchangePolicy(backoff_base=1.0, backoff_max=3.0)
    assert all(0 <= policy.backoff(n) <= min(3.0, 2 ** (n - 1)) for n in range(1, 8))


# -------------------------------------------------------------------------------- exchange


async def test_exchange_success(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.token_lifetime = 1234
    before = time.time()
    token = await client.exchange(account, ["role1", "role2"], {"user_id": "u1"})
    assert token.token_type == "Bearer"
    assert token.attempts == 1
    claims = jwt.decode(
        token.access_token,
        emulator.state.public_key_pem(),
        algorithms=["RS256"],
        audience=emulator.base_url,
    )
    assert claims["sub"] == account.client_id
    assert claims["scope"] == ["role1", "role2"]
    assert claims["ctx"] == {"user_id": "u1"}
    assert token.expires_at == claims["exp"] == claims["iat"] + 1234
    assert before - 1 <= token.issued_at <= time.time()
    assert math.isclose(token.expires_in(token.issued_at), 1234, abs_tol=2)

    (recorded,) = emulator.state.requests
    assert recorded.scope == "role:role1 role:role2"
    assert recorded.ctx == {"user_id": "u1"}
    assert set(recorded.claims) == {"iss", "key", "aud", "sub", "exp", "ctx"}
    assert recorded.body_keys == ["assertion", "grant_type", "scope"]


async def test_exchange_without_roles_sends_no_scope(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    await client.exchange(account)
    (recorded,) = emulator.state.requests
    assert recorded.body_keys == ["assertion", "grant_type"]
    assert recorded.scope is None
    assert not recorded.has_ctx


async def test_exchange_ctx_string(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    await client.exchange(account, ["r"], "end-user-7")
    assert emulator.state.requests[-1].ctx == "end-user-7"


async def test_invalid_input_fails_before_network(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    with pytest.raises(InvalidContext):
        await client.exchange(account, ["r"], {"no-dashes": 1})
    with pytest.raises(InvalidInput):
        await client.exchange(account, ["two words"])
    assert emulator.state.token_calls == 0


async def test_retries_500_then_succeeds(
    emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(fail_status=500, fail_count=2))
    seen: list[tuple[int | None, str | None, float]] = []
    async with TokenClient(
        FAST, transport=emulator.transport(), on_attempt=lambda *a: seen.append(a)
    ) as client:
        token = await client.exchange(account, ["r"])
    assert token.attempts == 3
    assert [status for status, _, _ in seen] == [500, 500, 200]
    assert all(request_id for _, request_id, _ in seen)
    assert all(elapsed >= 0 for _, _, elapsed in seen)
    assert emulator.state.failures == 2
    assert emulator.state.successes == 1


async def test_hook_errors_do_not_break_exchange(
    emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    def broken(status: int | None, request_id: str | None, elapsed: float) -> None:
        raise RuntimeError("telemetry down")

    async with TokenClient(FAST, transport=emulator.transport(), on_attempt=broken) as client:
        assert (await client.exchange(account)).attempts == 1


async def test_429_retry_after_honoured(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(fail_status=429, fail_count=1, retry_after=0.4))
    started = time.monotonic()
    token = await client.exchange(account)
    assert time.monotonic() - started >= 0.4
    assert token.attempts == 2


async def test_retry_after_past_deadline_gives_up_at_once(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(fail_status=429, retry_after=60))
    started = time.monotonic()
    with pytest.raises(SkyflowUnavailable) as info:
        await client.exchange(account)
    assert time.monotonic() - started < 1.0
    assert info.value.status == 429
    assert info.value.attempts == 1
    assert "Retry-After of 60 s is past the deadline" in str(info.value)
    assert info.value.request_id == emulator.state.rejections[-1].request_id


async def test_5xx_exhausts_attempts(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(fail_status=503))
    with pytest.raises(SkyflowUnavailable) as info:
        await client.exchange(account)
    error = info.value
    assert error.status == 503
    assert error.attempts == FAST.max_attempts == emulator.state.token_calls
    assert error.request_id == emulator.state.rejections[-1].request_id
    assert error.skyflow_message == "Injected fault"
    assert "HTTP 503" in str(error)
    assert error.request_id in str(error)
    assert "4 attempts" in str(error)


async def test_no_retry_on_401(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(reject=True))
    with pytest.raises(SkyflowRejected) as info:
        await client.exchange(account, ["r"])
    error = info.value
    assert error.status == 401
    assert error.attempts == 1
    assert emulator.state.token_calls == 1
    assert error.request_id == emulator.state.rejections[-1].request_id
    assert error.skyflow_message == "Invalid credentials"
    assert error.category == "rejected"
    # the caller gets the category, status and request ID; Skyflow's text goes to the log
    assert str(error).startswith(
        f"Skyflow token request failed: rejected (HTTP 401, request id {error.request_id}): "
    )
    assert "Invalid credentials" not in str(error)
    assert error.log_fields()["skyflow_message"] == "Invalid credentials"


async def test_unknown_account_rejected(client: TokenClient, account: ServiceAccount) -> None:
    stranger = parse_credentials(
        InProcessEmulator().create_account()  # registered with another emulator only
    )
    with pytest.raises(SkyflowRejected) as info:
        await client.exchange(stranger)
    assert info.value.status == 401
    assert "unknown client" in (info.value.skyflow_message or "")


async def test_deadline_on_hanging_upstream(
    emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(latency=30))
    policy = ExchangePolicy(deadline=0.5, backoff_base=0.01)
    async with TokenClient(policy, transport=emulator.transport()) as client:
        started = time.monotonic()
        with pytest.raises(SkyflowUnavailable) as info:
            await client.exchange(account)
        assert time.monotonic() - started < 1.5
    assert info.value.status is None
    assert "deadline" in str(info.value)


async def test_caller_deadline_wins_when_earlier(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(latency=30))
    started = time.monotonic()
    with pytest.raises(SkyflowUnavailable):
        await client.exchange(account, deadline=started + 0.3)
    assert time.monotonic() - started < 1.0


async def test_deadline_already_passed(client: TokenClient, account: ServiceAccount) -> None:
    with pytest.raises(SkyflowUnavailable, match="deadline"):
        await client.exchange(account, deadline=time.monotonic() - 1)


async def test_cancellation_propagates(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(latency=30))
    task = asyncio.create_task(client.exchange(account))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5


async def test_cancellation_during_backoff(
    emulator: InProcessEmulator, account: ServiceAccount
) -> None:
    emulator.state.set_faults(Faults(fail_status=503, retry_after=2))
    attempted = asyncio.Event()
    async with TokenClient(
        transport=emulator.transport(), on_attempt=lambda *_: attempted.set()
    ) as client:
        task = asyncio.create_task(client.exchange(account))
        await attempted.wait()  # the first attempt failed; the client now sleeps 2 s
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert emulator.state.token_calls == 1


async def test_closed_client_refuses(emulator: InProcessEmulator, account: ServiceAccount) -> None:
    client = TokenClient(FAST, transport=emulator.transport())
    await client.aclose()
    assert client.closed
    with pytest.raises(RuntimeError):
        await client.exchange(account)


# ----------------------------------------------------------- responses the emulator won't give


def _mock(handler: Any) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


async def test_request_shape(account: ServiceAccount) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"accessToken": "opaque", "tokenType": "Bearer"})

    async with TokenClient(FAST, transport=_mock(handler)) as client:
        token = await client.exchange(account, ["r1", "r2"])
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == account.token_endpoint
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body["grant_type"] == GRANT_TYPE
    assert body["scope"] == "role:r1 role:r2"
    assert set(body) == {"grant_type", "assertion", "scope"}
    # an opaque (non-JWT) token falls back to Skyflow's 60 minutes
    assert token.expires_at == pytest.approx(token.issued_at + 3600)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"tokenType": "Bearer"}',
        b'{"accessToken": 5}',
        b'{"accessToken": ""}',
        b'{"accessToken": "x", "tokenType": 1}',
    ],
)
async def test_malformed_success_body(account: ServiceAccount, body: bytes) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, content=body, headers={"X-Request-Id": "rid-1"})

    async with TokenClient(FAST, transport=_mock(handler)) as client:
        with pytest.raises(SkyflowUnavailable) as info:
            await client.exchange(account)
    assert calls == 1
    assert "malformed" in str(info.value)
    assert info.value.request_id == "rid-1"
    assert body.decode() not in str(info.value)


async def test_skyflow_error_body_parsed(account: ServiceAccount) -> None:
    error = {
        "error": {
            "grpc_code": 3,
            "http_code": 400,
            "http_status": "Bad Request",
            "message": "Invalid scope\nsecond line",
            "details": [],
        }
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=error, headers={"X-Request-Id": "req-abc"})

    async with TokenClient(FAST, transport=_mock(handler)) as client:
        with pytest.raises(SkyflowRejected) as info:
            await client.exchange(account)
    assert info.value.status == 400
    assert info.value.request_id == "req-abc"
    assert info.value.skyflow_message == "Invalid scope second line"
    assert "\n" not in str(info.value)


async def test_non_json_error_and_redirect(account: ServiceAccount) -> None:
    responses = iter([httpx.Response(502, text="<html>bad gateway</html>"), httpx.Response(302)])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(responses)

    async with TokenClient(FAST, transport=_mock(handler)) as client:
        with pytest.raises(SkyflowUnavailable) as info:
            await client.exchange(account)
    assert info.value.status == 302  # the 502 was retried, the redirect is not followed
    assert info.value.attempts == 2
    assert "html" not in str(info.value)


async def test_connection_errors_retried(account: ServiceAccount) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    async with TokenClient(FAST, transport=_mock(handler)) as client:
        with pytest.raises(SkyflowUnavailable) as info:
            await client.exchange(account)
    assert calls == FAST.max_attempts
    assert info.value.status is None
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.category == "unreachable"
    assert "connection refused" not in str(info.value)  # network detail: log only
    assert "ConnectError: connection refused" in (info.value.detail or "")


async def test_read_timeout_retried(account: ServiceAccount) -> None:
    outcomes: list[Any] = [httpx.ReadTimeout, httpx.Response(200, json={"accessToken": "t"})]

    def handler(request: httpx.Request) -> httpx.Response:
        outcome = outcomes.pop(0)
        if isinstance(outcome, httpx.Response):
            return outcome
        raise outcome("read timed out", request=request)

    async with TokenClient(FAST, transport=_mock(handler)) as client:
        token = await client.exchange(account)
    assert token.attempts == 2
    assert token.token_type == "Bearer"


async def test_no_secret_in_any_error_text(
    client: TokenClient, emulator: InProcessEmulator, account: ServiceAccount, creds: dict[str, str]
) -> None:
    texts: list[str] = []
    for faults in (Faults(reject=True), Faults(fail_status=503), Faults(latency=30)):
        emulator.state.set_faults(faults)
        with pytest.raises(UpstreamError) as info:
            await client.exchange(account, ["r"], deadline=time.monotonic() + 0.3)
        texts += [str(info.value), repr(info.value)]
    emulator.state.reset_faults()
    token = await client.exchange(account)
    key_lines = creds["privateKey"].splitlines()[1:-1]
    for text in texts:
        assert "eyJ" not in text
        assert token.access_token not in text
        assert not any(line in text for line in key_lines)
    assert token.access_token not in repr(token)


def test_safe_text_redacts() -> None:
    jwtish = "eyJhbGciOi.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert safe_text(f"token {jwtish} leaked") == "token [redacted token] leaked"
    pem = "-----BEGIN " + "PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
    assert safe_text(f"key {pem} end") == "key [redacted key] end"
    assert len(safe_text("x" * 1000)) == 300
