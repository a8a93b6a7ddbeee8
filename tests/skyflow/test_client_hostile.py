"""A hostile or broken token endpoint: bounded reads, no 500, one mount's pause.

Each test drives :class:`TokenClient` (or the engine) against an ``httpx.MockTransport`` whose
replies are what an attacker holding the endpoint could send: gzip bombs, endless bodies,
JSON nested past the parser, numbers past a float, a pool that never frees.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
import jwt
import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_vault_plugin.skyflow import client as client_module
from skyflow_vault_plugin.skyflow.backend import make_factory
from skyflow_vault_plugin.skyflow.client import ExchangePolicy, TokenClient
from skyflow_vault_plugin.skyflow.credentials import ServiceAccount, TokenHosts, parse_credentials
from skyflow_vault_plugin.skyflow.errors import SkyflowRejected, SkyflowUnavailable
from skyflow_vault_plugin.skyflow.mount import EngineSettings
from skyflow_vault_plugin.skyflow.responses import (
    MAX_ERROR_BYTES,
    MAX_MOUNT_BACKOFF,
    MAX_RESPONSE_BYTES,
)
from vault_plugin_sdk.testing import PluginTestClient, open_driver

FAST = ExchangePolicy(deadline=2.0, backoff_base=0.01, backoff_max=0.02, max_attempts=2)
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def account(emulator: InProcessEmulator) -> ServiceAccount:
    return parse_credentials(emulator.create_account("hostile-endpoint"))


class Endless(httpx.AsyncByteStream):
    """A body that never ends; counts what the client pulled from it."""

    def __init__(self, chunk: bytes = b"x" * CHUNK) -> None:
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += len(self.chunk)
            yield self.chunk


class Broken(httpx.AsyncByteStream):
    """A body whose read fails the way a bad Content-Encoding does inside httpx."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise httpx.DecodingError("invalid gzip data")
        yield b""  # pragma: no cover - makes this an async generator


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> TokenClient:
    return TokenClient(FAST, transport=httpx.MockTransport(handler))


async def _fails(
    account: ServiceAccount, handler: Callable[[httpx.Request], httpx.Response]
) -> SkyflowUnavailable | SkyflowRejected:
    async with _client(handler) as client:
        with pytest.raises((SkyflowUnavailable, SkyflowRejected)) as info:
            await client.exchange(account)
    assert isinstance(info.value, SkyflowUnavailable | SkyflowRejected)
    return info.value


# -- bounded reads -------------------------------------------------------------------------


async def test_identity_encoding_is_asked_for(account: ServiceAccount) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding", ""))
        return httpx.Response(200, json={"accessToken": "t"})

    async with _client(handler) as client:
        await client.exchange(account)
    assert seen == ["identity"]


async def test_a_gzip_bomb_is_not_inflated(account: ServiceAccount) -> None:
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024))  # 64 MiB in ~64 KB

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"})

    error = await _fails(account, handler)
    assert error.category == "malformed"
    assert "Content-Encoding" in (error.detail or "")


@pytest.mark.parametrize("status", [200, 400, 503])
async def test_an_endless_body_is_cut_at_its_cap(account: ServiceAccount, status: int) -> None:
    streams: list[Endless] = []

    def handler(request: httpx.Request) -> httpx.Response:
        streams.append(Endless())
        return httpx.Response(status, stream=streams[-1], headers={"X-Request-Id": "rid-9"})

    error = await _fails(account, handler)
    cap = MAX_RESPONSE_BYTES if status == 200 else MAX_ERROR_BYTES
    assert all(stream.sent <= cap + CHUNK for stream in streams)
    assert error.request_id == "rid-9"
    assert error.category == {200: "malformed", 400: "rejected", 503: "failing"}[status]
    assert error.skyflow_message is None


async def test_a_declared_huge_body_is_not_read(account: ServiceAccount) -> None:
    stream = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=stream, headers={"Content-Length": str(10 * 1024 * 1024 * 1024)}
        )

    error = await _fails(account, handler)
    assert error.category == "malformed"
    assert stream.sent == 0


async def test_a_huge_error_message_costs_no_more_than_a_short_one(
    account: ServiceAccount,
) -> None:
    hostile = json.dumps({"error": {"message": "eyJ" * 5_000}})  # under the error cap

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=hostile.encode())

    started = time.perf_counter()
    error = await _fails(account, handler)
    assert time.perf_counter() - started < 1.0  # the former patterns took seconds on this
    assert "eyJ" not in (error.skyflow_message or "")
    assert len(str(error)) < 400


# -- no 500 from a malformed reply ---------------------------------------------------------


MALFORMED_REPLIES: dict[str, Callable[[], httpx.Response]] = {
    "decoding error": lambda: httpx.Response(200, stream=Broken()),
    "nested past the parser": lambda: httpx.Response(200, content=b"[" * 60_000 + b"]" * 60_000),
    "nested error body": lambda: httpx.Response(400, content=b'{"error":' * 2_000),
    "not UTF-8": lambda: httpx.Response(200, content=b'{"accessToken": "\xff\xfe"}'),
    "unexpected status": lambda: httpx.Response(302, headers={"Location": "https://x/"}),
    "broken HTTP": lambda: (_ for _ in ()).throw(httpx.RemoteProtocolError("bad framing")),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_REPLIES))
async def test_a_malformed_reply_is_the_malformed_category(
    account: ServiceAccount, name: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return MALFORMED_REPLIES[name]()

    error = await _fails(account, handler)
    expected = "rejected" if name == "nested error body" else "malformed"
    assert error.category == expected
    assert isinstance(error, SkyflowRejected if expected == "rejected" else SkyflowUnavailable)


@pytest.mark.parametrize("exp", [10**400, 1e308, -5, "soon", True])
async def test_an_absurd_exp_claim_falls_back_to_the_default_lifetime(
    account: ServiceAccount, exp: object
) -> None:
    header = '{"alg":"none","typ":"JWT"}'
    body = json.dumps({"exp": 0}).replace("0", str(exp) if not isinstance(exp, str) else '"s"')
    token = (
        ".".join(jwt.utils.base64url_encode(part.encode()).decode() for part in (header, body))
        + "."
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"accessToken": token, "tokenType": "Bearer"})

    async with _client(handler) as client:
        issued = await client.exchange(account)
    assert issued.expires_at == pytest.approx(issued.issued_at + 3600)


async def test_pool_exhaustion_is_not_reported_as_skyflow_timing_out(
    account: ServiceAccount,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection available", request=request)

    error = await _fails(account, handler)
    assert error.category == "busy"
    assert "timed out" not in str(error)
    assert "not Skyflow" in str(error)


# -- the whole mount backs off after a 429 -------------------------------------------------


async def test_after_a_429_every_ctx_waits(
    account: ServiceAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content)["assertion"])
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "30"})
        return httpx.Response(200, json={"accessToken": "t"})

    async with _client(handler) as client:
        with pytest.raises(SkyflowUnavailable) as first:
            await client.exchange(account, ctx="user-1")
        assert first.value.category == "rate limited"
        assert client.backing_off() > 25
        for ctx in ("user-2", "user-3", {"k": "v"}):
            with pytest.raises(SkyflowUnavailable) as info:
                await client.exchange(account, ctx=ctx)
            assert info.value.category == "rate limited"
            assert "backing off" in str(info.value)
        assert len(calls) == 1  # nothing reached the endpoint while backing off

        later = time.monotonic() + 31
        monkeypatch.setattr(client_module, "_pause_clock", lambda: later)
        assert client.backing_off() == 0
        await client.exchange(account, ctx="user-2")
    assert len(calls) == 2


async def test_a_huge_retry_after_pauses_the_mount_for_a_bounded_time(
    account: ServiceAccount,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "99999999"})

    async with _client(handler) as client:
        with pytest.raises(SkyflowUnavailable):
            await client.exchange(account)
        assert 0 < client.backing_off() <= MAX_MOUNT_BACKOFF


# -- through the engine: one caller's ctx cycling, another's cached token -----------------


class Switch(httpx.AsyncBaseTransport):
    """The emulator, until ``hostile`` replaces its replies."""

    def __init__(self, emulator: InProcessEmulator) -> None:
        self.inner = emulator.transport()
        self.hostile: Callable[[], httpx.Response] | None = None
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.hostile is not None:
            return self.hostile()
        return await self.inner.handle_async_request(request)


@contextlib.asynccontextmanager
async def engine(transport: Switch) -> AsyncIterator[PluginTestClient]:
    settings = EngineSettings(
        transport=transport,
        policy=FAST,
        allowed_token_hosts=TokenHosts.parse("emulator.test"),
    )
    async with open_driver("direct", make_factory(settings)) as driver:
        yield PluginTestClient(driver, mount_point="skyflow/insurance/")


async def _configured(client: PluginTestClient, emulator: InProcessEmulator) -> None:
    creds = json.dumps(emulator.create_account())
    assert (await client.write("config", {"credentials_json": creds})).status == 200
    for role in ("cycler", "steady"):
        assert (await client.write(f"roles/{role}", {"role_ids": [role]})).status == 200


async def test_a_429_stops_new_mints_for_the_whole_mount_but_serves_cached_tokens(
    emulator: InProcessEmulator,
) -> None:
    transport = Switch(emulator)
    async with engine(transport) as client:
        await _configured(client, emulator)
        steady = await client.read("creds/steady")
        assert steady.status == 200
        transport.hostile = lambda: httpx.Response(429, headers={"Retry-After": "60"})
        first = await client.read("creds/cycler", {"ctx": "a"})
        assert first.status == 503
        assert "rate limited" in first.errors[0]
        calls = transport.calls
        for ctx in ("b", "c", "d"):
            cycled = await client.read("creds/cycler", {"ctx": ctx})
            assert cycled.status == 503
            assert "backing off" in cycled.errors[0]
        assert transport.calls == calls  # the cycling spent nothing of the account's limit
        # another application of the mount still gets its cached token
        again = await client.read("creds/steady")
        assert again.status == 200
        assert again.data["access_token"] == steady.data["access_token"]


@pytest.mark.parametrize(
    "reply",
    [
        lambda: httpx.Response(200, stream=Broken()),
        lambda: httpx.Response(200, content=b"[" * 60_000 + b"]" * 60_000),
    ],
    ids=["decoding error", "recursion"],
)
async def test_a_malformed_reply_is_a_503_and_keeps_the_stale_token_fallback(
    emulator: InProcessEmulator, reply: Callable[[], httpx.Response]
) -> None:
    transport = Switch(emulator)
    emulator.state.token_lifetime = 300  # below min_remaining_ttl: every read re-mints
    try:
        async with engine(transport) as client:
            await _configured(client, emulator)
            first = await client.read("creds/steady")
            assert first.status == 200
            transport.hostile = reply
            second = await client.read("creds/steady")
            assert second.status == 200, second.errors
            assert second.data["access_token"] == first.data["access_token"]
            assert second.warnings
            fresh = await client.read("creds/cycler")
            assert fresh.status == 503
            assert "malformed" in fresh.errors[0]
    finally:
        emulator.state.token_lifetime = 3600
