"""The emulator's token endpoint and admin API, in-process (httpx.ASGITransport)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/v1/auth/sa/oauth/token"


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


pytestmark = pytest.mark.usefixtures("fresh_emulator")  # a clean emulator for every test


@pytest.fixture
async def http(emulator: InProcessEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with emulator.client() as client:
        yield client


def _claims(creds: dict[str, str], **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": creds["clientID"],
        "key": creds["keyID"],
        "aud": creds["tokenURI"],
        "sub": creds["clientID"],
        "exp": int(time.time()) + 3600,
    }
    for name, value in changes.items():
        if value is _DROP:
            del claims[name]
        else:
            claims[name] = value
    return claims


_DROP = object()


_KEYS: dict[str, Any] = {}


def _key(creds: dict[str, str]) -> Any:
    # parsing a PEM (with its RSA consistency checks) costs more than signing; do it once
    pem = creds["privateKey"]
    if pem not in _KEYS:
        _KEYS[pem] = serialization.load_pem_private_key(pem.encode(), password=None)
    return _KEYS[pem]


def _assertion(
    creds: dict[str, str], signing_key: Any = None, alg: str = "RS256", **changes: Any
) -> str:
    return jwt.encode(_claims(creds, **changes), signing_key or _key(creds), algorithm=alg)


def _body(assertion: str, **extra: Any) -> dict[str, Any]:
    return {"grant_type": GRANT, "assertion": assertion, **extra}


def _assert_skyflow_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"grpc_code", "http_code", "http_status", "message", "details"}
    assert error["http_code"] == status
    assert isinstance(error["grpc_code"], int)
    assert isinstance(error["http_status"], str)
    assert error["details"] == []
    return error


async def test_token_success(
    http: httpx.AsyncClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    ctx = {"user_id": "u1", "n": 2}
    response = await http.post(
        TOKEN_PATH, json=_body(_assertion(creds, ctx=ctx), scope="role:r1 role:r2")
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    body = response.json()
    assert set(body) == {"accessToken", "tokenType"}
    assert body["tokenType"] == "Bearer"
    token = body["accessToken"]
    header = jwt.get_unverified_header(token)
    assert header["kid"] == emulator.state.signing_key_id
    claims = jwt.decode(
        token, emulator.state.public_key_pem(), algorithms=["RS256"], audience=emulator.base_url
    )
    assert claims["sub"] == creds["clientID"]
    assert claims["iss"] == emulator.base_url
    assert claims["scope"] == ["r1", "r2"]
    assert claims["ctx"] == ctx
    assert claims["exp"] == claims["iat"] + 3600
    assert claims["jti"]

    state = emulator.state
    assert (state.token_calls, state.successes, state.failures) == (1, 1, 0)
    assert state.by_client[creds["clientID"]].successes == 1
    (recorded,) = state.requests
    assert recorded.request_id == request_id
    assert recorded.role_ids == ["r1", "r2"]
    assert recorded.ctx == ctx
    assert recorded.header == {"alg": "RS256", "typ": "JWT"}


async def test_token_lifetime_and_no_scope(
    http: httpx.AsyncClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    emulator.state.token_lifetime = 60
    # the official SDK sends "scope": null when no role IDs are given
    response = await http.post(TOKEN_PATH, json=_body(_assertion(creds), scope=None))
    assert response.status_code == 200
    claims = jwt.decode(response.json()["accessToken"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 60
    assert claims["scope"] == []
    assert "ctx" not in claims


@pytest.mark.parametrize("ctx", ["user", 5, 1.5, True, {"a_B_9": {"nested-ok": [1]}}])
async def test_ctx_forms_accepted(http: httpx.AsyncClient, creds: dict[str, str], ctx: Any) -> None:
    response = await http.post(TOKEN_PATH, json=_body(_assertion(creds, ctx=ctx)))
    assert response.status_code == 200, response.text


def _bad_cases(
    creds: dict[str, str], other_key: rsa.RSAPrivateKey | None
) -> dict[str, Callable[[], tuple[Any, int]]]:
    now = int(time.time())

    def good() -> str:
        return _assertion(creds)

    return {
        "wrong key": lambda: (_body(_assertion(creds, signing_key=other_key)), 401),
        "wrong aud": lambda: (_body(_assertion(creds, aud="https://elsewhere.test/token")), 401),
        "aud list": lambda: (_body(_assertion(creds, aud=[creds["tokenURI"]])), 401),
        "unknown iss": lambda: (_body(_assertion(creds, iss="nobody", sub="nobody")), 401),
        "sub differs": lambda: (_body(_assertion(creds, sub="someone-else")), 401),
        "key claim differs": lambda: (_body(_assertion(creds, key="other-key-id")), 401),
        "missing iss": lambda: (_body(_assertion(creds, iss=_DROP)), 400),
        "exp too far": lambda: (_body(_assertion(creds, exp=now + 3600 + 300)), 400),
        "expired": lambda: (_body(_assertion(creds, exp=now - 120)), 401),
        "missing exp": lambda: (_body(_assertion(creds, exp=_DROP)), 400),
        "HS256": lambda: (_body(_assertion(creds, signing_key="x" * 32, alg="HS256")), 400),
        "not a JWT": lambda: (_body("not.a.jwt"), 400),
        "scope empty id": lambda: (_body(good(), scope="role:"), 400),
        "scope two spaces": lambda: (_body(good(), scope="role:a  role:b"), 400),
        "scope comma": lambda: (_body(good(), scope="role:a,role:b"), 400),
        "scope prefix": lambda: (_body(good(), scope="roles:a"), 400),
        "scope leading space": lambda: (_body(good(), scope=" role:a"), 400),
        "scope empty": lambda: (_body(good(), scope=""), 400),
        "scope list": lambda: (_body(good(), scope=["role:a"]), 400),
        "bad grant_type": lambda: ({"grant_type": "client_credentials", "assertion": good()}, 400),
        "missing grant_type": lambda: ({"assertion": good()}, 400),
        "missing assertion": lambda: ({"grant_type": GRANT}, 400),
        "unknown field": lambda: (_body(good(), extra=1), 400),
        "subject_token": lambda: (_body(good(), subject_token="x"), 400),
        "ctx bad key": lambda: (_body(_assertion(creds, ctx={"bad-key": 1})), 400),
        "ctx empty map": lambda: (_body(_assertion(creds, ctx={})), 400),
        "ctx blank": lambda: (_body(_assertion(creds, ctx=" ")), 400),
        "ctx null": lambda: (_body(_assertion(creds, ctx=None)), 400),
        "ctx list": lambda: (_body(_assertion(creds, ctx=["a"])), 400),
        "body not object": lambda: ([1, 2], 400),
    }


# the case names only; the lambdas are not run here, so placeholder credentials do
CASES = list(_bad_cases(dict.fromkeys(("clientID", "keyID", "tokenURI", "privateKey"), ""), None))


@pytest.mark.parametrize("case", CASES)
async def test_strict_verification(
    http: httpx.AsyncClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    other_key: rsa.RSAPrivateKey,
    case: str,
) -> None:
    body, status = _bad_cases(creds, other_key)[case]()
    response = await http.post(TOKEN_PATH, json=body)
    error = _assert_skyflow_error(response, status)
    state = emulator.state
    assert (state.token_calls, state.successes, state.failures) == (1, 0, 1)
    (rejection,) = state.rejections
    assert rejection.request_id == response.headers["x-request-id"]
    assert rejection.message == error["message"]


async def test_non_json_and_content_type(http: httpx.AsyncClient, creds: dict[str, str]) -> None:
    _assert_skyflow_error(await http.post(TOKEN_PATH, content=b"{nope"), 400)
    form = {"grant_type": GRANT, "assertion": _assertion(creds)}
    _assert_skyflow_error(await http.post(TOKEN_PATH, data=form), 400)


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    _assert_skyflow_error(await http.get("/v1/nothing"), 404)
    _assert_skyflow_error(await http.get(TOKEN_PATH), 405)


async def test_fault_fail_next_n_with_retry_after(
    http: httpx.AsyncClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    set_response = await http.post(
        "/_emulator/faults", json={"fail_status": 503, "fail_count": 2, "retry_after": 3}
    )
    assert set_response.status_code == 200
    body = _body(_assertion(creds))
    for _ in range(2):
        response = await http.post(TOKEN_PATH, json=body)
        _assert_skyflow_error(response, 503)
        assert response.headers["retry-after"] == "3"
    assert (await http.post(TOKEN_PATH, json=body)).status_code == 200
    state = emulator.state
    assert (state.token_calls, state.successes, state.failures) == (3, 1, 2)
    counters = state.by_client[creds["clientID"]]
    assert (counters.calls, counters.successes, counters.failures) == (3, 1, 2)


async def test_fault_forever_reject_and_latency(
    http: httpx.AsyncClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    body = _body(_assertion(creds))
    emulator.state.set_faults(Faults(fail_status=500))
    for _ in range(3):
        _assert_skyflow_error(await http.post(TOKEN_PATH, json=body), 500)
    emulator.state.set_faults(Faults(reject=True))
    error = _assert_skyflow_error(await http.post(TOKEN_PATH, json=body), 401)
    assert error["grpc_code"] == 16
    emulator.state.set_faults(Faults(latency=0.2))
    started = time.monotonic()
    assert (await http.post(TOKEN_PATH, json=body)).status_code == 200
    assert time.monotonic() - started >= 0.2
    assert (await http.delete("/_emulator/faults")).json()["latency"] == 0


async def test_admin_create_and_list_accounts(
    http: httpx.AsyncClient, emulator: InProcessEmulator
) -> None:
    response = await http.post("/_emulator/accounts", json={"client_name": "demo"})
    assert response.status_code == 201
    assert response.headers["x-request-id"]
    creds = response.json()
    assert list(creds) == ["clientID", "clientName", "tokenURI", "keyID", "privateKey"]
    assert creds["clientName"] == "demo"
    assert creds["tokenURI"] == f"{emulator.base_url}{TOKEN_PATH}"
    assert creds["privateKey"].startswith("-----BEGIN " + "PRIVATE KEY-----")
    assert (await http.post("/_emulator/accounts")).status_code == 201

    listed = (await http.get("/_emulator/accounts")).json()["accounts"]
    assert creds["clientID"] in [a["clientID"] for a in listed]
    assert all("privateKey" not in a for a in listed)
    _assert_skyflow_error(await http.post("/_emulator/accounts", json={"bogus": 1}), 400)

    # the new account works at once
    token = await http.post(TOKEN_PATH, json=_body(_assertion(creds)))
    assert token.status_code == 200


@pytest.mark.parametrize(
    "faults",
    [
        {"nope": 1},
        {"latency": "slow"},
        {"latency": -1},
        {"fail_status": 200},
        {"fail_status": True},
        {"fail_count": -1},
        {"reject": 1},
        [],
    ],
)
async def test_admin_fault_validation(http: httpx.AsyncClient, faults: Any) -> None:
    _assert_skyflow_error(await http.post("/_emulator/faults", json=faults), 400)


async def test_admin_stats_reset_settings_key(
    http: httpx.AsyncClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await http.post(TOKEN_PATH, json=_body(_assertion(creds), scope="role:x"))
    await http.post(TOKEN_PATH, json={})
    stats = (await http.get("/_emulator/stats")).json()
    assert (stats["token_calls"], stats["successes"], stats["failures"]) == (2, 1, 1)
    assert stats["requests"][0]["scope"] == "role:x"
    assert stats["requests"][0]["claims"]["iss"] == creds["clientID"]
    assert stats["rejections"][0]["status"] == 400
    assert stats["faults"]["fail_status"] is None

    await http.post("/_emulator/faults", json={"reject": True})
    reset = (await http.post("/_emulator/reset")).json()
    assert reset["token_calls"] == 0
    assert reset["faults"]["reject"] is False
    assert creds["clientID"] in reset["accounts"]
    await http.post(TOKEN_PATH, json={})
    assert (await http.delete("/_emulator/stats")).json()["failures"] == 0

    settings = await http.post("/_emulator/settings", json={"token_lifetime": 120})
    assert settings.json() == {"token_lifetime": 120}
    assert emulator.state.token_lifetime == 120
    _assert_skyflow_error(await http.post("/_emulator/settings", json={"token_lifetime": 0}), 400)

    key = await http.get("/_emulator/public-key")
    assert key.text == emulator.state.public_key_pem()
    assert key.text.startswith("-----BEGIN PUBLIC KEY-----")
    assert (await http.get("/_emulator/health")).json()["status"] == "ok"
