"""The broker client, against grpclib's server (an independent HTTP/2 stack) and against a
scripted host that sends what a well-behaved one would not."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from vault_plugin_sdk.framework import StorageEntry, StorageError
from vault_plugin_sdk.plugin import broker_channel
from vault_plugin_sdk.plugin.broker import Broker
from vault_plugin_sdk.plugin.broker_channel import BrokerChannel, ClientConnection
from vault_plugin_sdk.plugin.host import GrpcStorage
from vault_plugin_sdk.plugin.http2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADER_CACHE_SIZE,
    HEADERS,
    RST_STREAM,
    SETTINGS,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    FlowControlled,
    FramedConnection,
    encode_headers,
    frame,
    grpc_message,
)
from vault_plugin_sdk.plugin.pb import backend_pb2 as pb
from vault_plugin_sdk.testing import InMemoryStorage, StorageServer

GET = "/pb.Storage/Get"
PUT = "/pb.Storage/Put"


class SlowStorage(StorageServer):
    """Storage whose ``Get`` of ``slow`` waits until released, and whose ``Get`` of
    ``broken`` fails with a status carrying text that needs percent-encoding."""

    def __init__(self, backing: InMemoryStorage) -> None:
        super().__init__(backing)
        self.release = asyncio.Event()
        self.started = asyncio.Event()  # a Get of "slow" reached the handler
        self.cancelled = asyncio.Event()

    async def Get(self, stream: Stream[pb.StorageGetArgs, pb.StorageGetReply]) -> None:  # noqa: N802
        request = await stream.recv_message()
        assert request is not None
        if request.key == "broken":
            raise GRPCError(Status.FAILED_PRECONDITION, "100% gone: clé\nsecond line")
        if request.key == "slow":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        entry = await self.storage.get(request.key)
        reply = pb.StorageGetReply()
        if entry is not None:
            reply.entry.key, reply.entry.value = entry.key, entry.value
            reply.entry.seal_wrap = entry.seal_wrap
        await stream.send_message(reply)


class Host:
    def __init__(self, path: str, backing: InMemoryStorage, service: SlowStorage) -> None:
        self.path = path
        self.backing = backing
        self.service = service


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    backing = InMemoryStorage()
    service = SlowStorage(backing)
    # The smallest windows HTTP/2 allows, so that large requests must wait for the host.
    config = Configuration(http2_connection_window_size=65_535, http2_stream_window_size=65_535)
    server = Server([service], config=config)
    path = str(tmp_path / "host.sock")
    await server.start(path=path)
    try:
        yield Host(path, backing, service)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def channel(host: Host) -> AsyncIterator[BrokerChannel]:
    channel = BrokerChannel("unix", host.path, None)
    try:
        yield channel
    finally:
        channel.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (at most 5 s): a condition, not a guessed delay."""
    async with asyncio.timeout(5):
        # Polled: the conditions are flags of protocols and transports, with no event to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def _connection(channel: BrokerChannel) -> ClientConnection:
    connection = channel._connection
    assert connection is not None
    return connection


async def test_storage_calls_round_trip_through_an_independent_server(
    channel: BrokerChannel, host: Host
) -> None:
    storage = GrpcStorage(channel)
    await storage.put(StorageEntry("roles/a", b"1", seal_wrap=True))
    assert await storage.get("roles/a") == StorageEntry("roles/a", b"1", seal_wrap=True)
    assert await storage.list("roles/") == ["a"]
    await storage.delete("roles/a")
    assert await storage.get("roles/a") is None
    assert host.backing.puts == 1


async def test_concurrent_calls_on_one_connection_each_get_their_own_reply(
    channel: BrokerChannel, host: Host
) -> None:
    for index in range(50):
        await host.backing.put(StorageEntry(f"k{index}", str(index).encode()))
    storage = GrpcStorage(channel)
    entries = await asyncio.gather(*(storage.get(f"k{index}") for index in range(50)))
    assert [entry.value if entry else None for entry in entries] == [
        str(index).encode() for index in range(50)
    ]
    connection = _connection(channel)
    assert connection._next_id == 2 * 50 + 1  # one connection carried them all


async def test_large_values_cross_the_hosts_flow_control_windows_both_ways(
    channel: BrokerChannel,
) -> None:
    storage = GrpcStorage(channel)
    value = os.urandom(1 << 20)  # 16 times the host's windows
    await storage.put(StorageEntry("big", value))
    entry = await storage.get("big")
    assert entry is not None
    assert entry.value == value


async def test_a_status_and_its_percent_encoded_message_reach_the_caller(
    channel: BrokerChannel,
) -> None:
    with pytest.raises(GRPCError) as raised:
        await channel.unary(GET, pb.StorageGetArgs(key="broken"), pb.StorageGetReply)
    assert raised.value.status is Status.FAILED_PRECONDITION
    assert raised.value.message == "100% gone: clé\nsecond line"
    with pytest.raises(StorageError, match="100% gone"):
        await GrpcStorage(channel).get("broken")


async def test_an_unknown_method_is_unimplemented(channel: BrokerChannel) -> None:
    with pytest.raises(GRPCError) as raised:
        await channel.unary("/pb.Storage/Nope", pb.StorageGetArgs(), pb.StorageGetReply)
    assert raised.value.status is Status.UNIMPLEMENTED


async def test_a_cancelled_call_resets_its_stream_and_the_connection_goes_on(
    channel: BrokerChannel, host: Host
) -> None:
    storage = GrpcStorage(channel)
    await host.backing.put(StorageEntry("fast", b"ok"))
    waiting = asyncio.ensure_future(storage.get("slow"))
    await asyncio.wait_for(host.service.started.wait(), 5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(host.service.cancelled.wait(), 5)  # the host saw RST_STREAM
    assert await storage.get("fast") == StorageEntry("fast", b"ok")
    assert not _connection(channel)._calls


async def test_finished_calls_leave_nothing_behind(channel: BrokerChannel, host: Host) -> None:
    """h2 remembers every closed stream (up to 2**16 per connection, ~11 MiB per 50,000
    calls); this client forgets a call when it ends."""
    await host.backing.put(StorageEntry("k", b"v"))
    storage = GrpcStorage(channel)
    for _ in range(300):
        await storage.get("k")
    connection = _connection(channel)
    assert connection._next_id == 601
    assert not connection._calls
    assert len(connection._blocks.remembered) <= HEADER_CACHE_SIZE
    assert len(channel._headers) == 1  # one header block per method, built once


async def test_stream_ids_are_never_reused_a_spent_connection_is_replaced(
    channel: BrokerChannel, host: Host
) -> None:
    await host.backing.put(StorageEntry("k", b"v"))
    storage = GrpcStorage(channel)
    await storage.get("k")
    first = _connection(channel)
    first._next_id = (1 << 31) - 1  # the last id a stream may have
    assert await storage.get("k") == StorageEntry("k", b"v")
    assert not first.usable
    assert await storage.get("k") == StorageEntry("k", b"v")
    assert _connection(channel) is not first
    assert _connection(channel)._next_id == 3


async def test_a_lost_connection_fails_the_call_and_the_next_call_dials_again(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "host.sock")
    backing = InMemoryStorage()
    await backing.put(StorageEntry("k", b"v"))
    service = SlowStorage(backing)
    server = Server([service])
    await server.start(path=path)
    channel = BrokerChannel("unix", path, None)
    storage = GrpcStorage(channel)
    try:
        assert await storage.get("k") is not None
        waiting = asyncio.ensure_future(storage.get("slow"))
        await asyncio.wait_for(service.started.wait(), 5)
        _connection(channel)._transport.close()  # type: ignore[union-attr]
        with pytest.raises(StorageError, match="storage get failed: the connection"):
            await waiting
        assert await storage.get("k") == StorageEntry("k", b"v")
    finally:
        channel.close()
        server.close()
        await server.wait_closed()
    with pytest.raises(StorageError, match="storage get failed"):
        await GrpcStorage(BrokerChannel("unix", path, None)).get("k")


async def test_the_broker_hands_out_a_channel_to_the_address_it_was_given() -> None:
    broker = Broker(None)
    broker.deliver(3, "unix", "/nonexistent/host.sock")
    channel = await broker.dial(3)
    assert isinstance(channel, BrokerChannel)
    assert channel.address == ("unix", "/nonexistent/host.sock")
    with pytest.raises(FileNotFoundError):  # it connects at the first call
        await channel.unary(GET, pb.StorageGetArgs(key="k"), pb.StorageGetReply)


# -- a scripted host ----------------------------------------------------------------------

Script = Callable[["ScriptedHost", int], None]


class ScriptedHost(FramedConnection):
    """A host server whose answer to each request is whatever ``script`` sends."""

    expects_preface = True

    def __init__(self, script: Script, settings: bytes = b"") -> None:
        super().__init__()
        self._script = script
        self._first_settings = settings
        self.requests: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.send(frame(SETTINGS, 0, 0, self._first_settings))

    def _headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        self.requests.append(stream_id)
        if end_stream:
            self._script(self, stream_id)

    def _stream_data(self, stream_id: int, payload: bytes, received: int, end: bool) -> None:
        if end:
            self._script(self, stream_id)

    def _reset(self, stream_id: int, code: int) -> None:
        pass

    def _flow_controlled(self) -> dict[int, FlowControlled]:
        return {}


OK_HEADERS = encode_headers([(":status", "200"), ("content-type", "application/grpc")])


def _reply(
    host: ScriptedHost, stream_id: int, body: bytes, trailers: list[tuple[str, str]]
) -> None:
    host.send(
        frame(HEADERS, END_HEADERS, stream_id, OK_HEADERS)
        + frame(DATA, 0, stream_id, body)
        + frame(HEADERS, END_HEADERS | END_STREAM, stream_id, encode_headers(trailers))
    )


@contextlib.asynccontextmanager
async def _scripted(
    tmp_path: Path, script: Script, settings: bytes = b""
) -> AsyncIterator[tuple[BrokerChannel, list[ScriptedHost]]]:
    """A channel to a scripted host; the hosts it connected to, in order."""
    hosts: list[ScriptedHost] = []

    def accept() -> ScriptedHost:
        hosts.append(ScriptedHost(script, settings))
        return hosts[-1]

    path = str(tmp_path / "scripted.sock")
    server = await asyncio.get_running_loop().create_unix_server(accept, path)
    channel = BrokerChannel("unix", path, None)
    try:
        yield channel, hosts
    finally:
        channel.close()
        server.close()


async def _get(channel: BrokerChannel) -> pb.StorageGetReply:
    return await channel.unary(GET, pb.StorageGetArgs(key="k"), pb.StorageGetReply)


@pytest.mark.parametrize(
    ("script", "status", "text"),
    [
        pytest.param(
            lambda host, sid: _reply(host, sid, grpc_message(b"") * 2, [("grpc-status", "0")]),
            Status.UNKNOWN,
            "exactly one message",
            id="two-messages",
        ),
        pytest.param(
            lambda host, sid: _reply(host, sid, b"\x01" + bytes(4), [("grpc-status", "0")]),
            Status.UNIMPLEMENTED,
            "compressed",
            id="compressed",
        ),
        pytest.param(
            lambda host, sid: host.send(frame(DATA, END_STREAM, sid, grpc_message(b""))),
            Status.UNKNOWN,
            "without a status",
            id="no-trailers",
        ),
        pytest.param(
            lambda host, sid: _reply(host, sid, grpc_message(b""), [("grpc-status", "99")]),
            Status.UNKNOWN,
            None,
            id="unknown-status",
        ),
        pytest.param(
            lambda host, sid: host.send(
                frame(HEADERS, END_HEADERS | END_STREAM, sid, encode_headers([(":status", "503")]))
            ),
            Status.UNKNOWN,
            "HTTP status 503",
            id="http-503",
        ),
        pytest.param(
            lambda host, sid: host.send(frame(RST_STREAM, 0, sid, (7).to_bytes(4, "big"))),
            Status.UNAVAILABLE,
            "reset",
            id="refused-stream",
        ),
    ],
)
async def test_a_malformed_reply_fails_its_call_with_a_status(
    tmp_path: Path, script: Script, status: Status, text: str | None
) -> None:
    async with _scripted(tmp_path, script) as (channel, _):
        with pytest.raises(GRPCError) as raised:
            await asyncio.wait_for(_get(channel), 5)
        assert raised.value.status is status
        if text is not None:
            assert text in (raised.value.message or "")


async def test_a_reply_larger_than_the_limit_is_refused_while_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_channel, "MAX_MESSAGE", 1000)

    def flood(host: ScriptedHost, stream_id: int) -> None:
        host.send(frame(HEADERS, END_HEADERS, stream_id, OK_HEADERS))
        host.send(frame(DATA, 0, stream_id, grpc_message(bytes(5000))[:2000]))

    async with _scripted(tmp_path, flood) as (channel, _):
        with pytest.raises(GRPCError) as raised:
            await asyncio.wait_for(_get(channel), 5)
        assert raised.value.status is Status.RESOURCE_EXHAUSTED
        assert not _connection(channel)._calls


async def test_the_hosts_limit_on_concurrent_streams_is_honoured(tmp_path: Path) -> None:
    pending: list[int] = []

    def hold(host: ScriptedHost, stream_id: int) -> None:
        pending.append(stream_id)

    limit = SETTINGS_MAX_CONCURRENT_STREAMS.to_bytes(2, "big") + (2).to_bytes(4, "big")
    async with _scripted(tmp_path, hold, limit) as (channel, hosts):
        calls = [asyncio.ensure_future(_get(channel)) for _ in range(5)]
        await _until(lambda: len(pending) == 2)
        await asyncio.sleep(0.05)  # room for a call that would break the limit
        assert len(hosts[0].requests) == 2  # the others wait for a stream to end
        answered = 0
        while answered < 5:
            await _until(lambda: bool(pending))
            while pending:
                _reply(hosts[0], pending.pop(0), grpc_message(b""), [("grpc-status", "0")])
                answered += 1
            assert len(hosts[0].requests) - answered <= 2
        replies = await asyncio.wait_for(asyncio.gather(*calls), 5)
        assert len(replies) == 5


async def test_calls_waiting_for_a_stream_go_as_soon_as_the_host_raises_its_limit(
    tmp_path: Path,
) -> None:
    pending: list[int] = []

    def hold(host: ScriptedHost, stream_id: int) -> None:
        pending.append(stream_id)

    def limit(streams: int) -> bytes:
        return SETTINGS_MAX_CONCURRENT_STREAMS.to_bytes(2, "big") + streams.to_bytes(4, "big")

    async with _scripted(tmp_path, hold, limit(1)) as (channel, hosts):
        calls = [asyncio.ensure_future(_get(channel)) for _ in range(3)]
        await _until(lambda: len(pending) == 1)
        await asyncio.sleep(0.05)  # room for a call that would break the limit
        assert len(hosts[0].requests) == 1
        hosts[0].send(frame(SETTINGS, 0, 0, limit(3)))  # no call has ended
        await _until(lambda: len(pending) == 3)
        for stream_id in pending:
            _reply(hosts[0], stream_id, grpc_message(b""), [("grpc-status", "0")])
        assert len(await asyncio.wait_for(asyncio.gather(*calls), 5)) == 3


async def test_goaway_fails_the_calls_the_host_never_started_and_redials(tmp_path: Path) -> None:
    def away(host: ScriptedHost, stream_id: int) -> None:
        if len(host.requests) == 1:
            _reply(host, stream_id, grpc_message(b""), [("grpc-status", "0")])
            return
        # The host will process nothing above the first stream.
        host.send(frame(7, 0, 0, (1).to_bytes(4, "big") + bytes(4)))

    async with _scripted(tmp_path, away) as (channel, hosts):
        await asyncio.wait_for(_get(channel), 5)
        with pytest.raises(ConnectionError, match="going away"):
            await asyncio.wait_for(_get(channel), 5)
        old = _connection(channel)
        await _until(lambda: old.closed)  # nothing left to finish on it: closed at once
        await asyncio.wait_for(_get(channel), 5)  # on a new connection
        assert len(hosts) == 2


async def test_a_cancelled_last_call_closes_a_retired_connection(tmp_path: Path) -> None:
    def hold(host: ScriptedHost, stream_id: int) -> None:
        if len(host.requests) == 1:
            _reply(host, stream_id, grpc_message(b""), [("grpc-status", "0")])

    async with _scripted(tmp_path, hold) as (channel, hosts):
        await asyncio.wait_for(_get(channel), 5)
        connection = _connection(channel)
        waiting = asyncio.ensure_future(_get(channel))
        await _until(lambda: len(hosts[0].requests) == 2)
        connection.retire()  # as when the channel moves on to a new connection
        assert not connection.closed  # a call is still in flight
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await _until(lambda: connection.closed)


async def test_a_host_that_never_speaks_http2_fails_the_call_naming_the_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_channel, "SETTINGS_WAIT_SECONDS", 0.2)
    path = str(tmp_path / "mute.sock")
    server = await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, path)
    channel = BrokerChannel("unix", path, None)
    try:
        with pytest.raises(StorageError, match=f"{path} sent no HTTP/2 SETTINGS within 0.2 s"):
            await GrpcStorage(channel).get("k")
    finally:
        channel.close()
        server.close()


def test_the_plugin_side_imports_neither_h2_nor_grpclibs_client() -> None:
    """A plugin process serving the host and calling its broker server loads no h2."""
    import subprocess
    import sys

    probe = """
import asyncio, sys
from vault_plugin_sdk.framework import StorageError
from vault_plugin_sdk.plugin.broker import Broker
from vault_plugin_sdk.plugin.host import GrpcStorage, GrpcSystemView
from vault_plugin_sdk.plugin.serve import serve

async def main():
    broker = Broker(None)
    broker.deliver(1, "unix", "/nonexistent/host.sock")
    channel = await broker.dial(1)
    GrpcSystemView(channel)
    try:
        await GrpcStorage(channel).get("k")
    except StorageError:
        pass

asyncio.run(main())
print(sorted(m for m in ("h2", "grpclib.client") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


async def test_after_goaway_the_calls_the_host_still_runs_finish_on_the_old_connection(
    tmp_path: Path,
) -> None:
    held: list[tuple[ScriptedHost, int]] = []

    def script(host: ScriptedHost, stream_id: int) -> None:
        if len(host.requests) == 1 and not held:
            held.append((host, stream_id))  # answered later, after the GOAWAY
        elif len(host.requests) == 2:
            host.send(frame(7, 0, 0, (1).to_bytes(4, "big") + bytes(4)))  # 1 still runs
        else:
            _reply(host, stream_id, grpc_message(b""), [("grpc-status", "0")])

    async with _scripted(tmp_path, script) as (channel, hosts):
        first = asyncio.ensure_future(_get(channel))
        await _until(lambda: bool(held))
        with pytest.raises(ConnectionError, match="going away"):
            await asyncio.wait_for(_get(channel), 5)
        await asyncio.wait_for(_get(channel), 5)  # a new connection
        assert len(hosts) == 2
        old_host, stream_id = held[0]
        _reply(old_host, stream_id, grpc_message(b""), [("grpc-status", "0")])
        await asyncio.wait_for(first, 5)
        transport = old_host._transport
        assert transport is not None
        await _until(transport.is_closing)  # the old connection closed once drained
