"""The plugin's own HTTP/2 gRPC server, driven by an independent client (grpclib + h2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1 import health_grpc, health_pb2
from grpclib.server import Stream

from vault_plugin_sdk.framework.backend import Backend, BackendConfig
from vault_plugin_sdk.plugin import http2
from vault_plugin_sdk.plugin.broker import Broker
from vault_plugin_sdk.plugin.codec import ERR_UNSUPPORTED_OPERATION
from vault_plugin_sdk.plugin.pb import (
    backend_grpc,
    goplugin_grpc,
    goplugin_pb2,
    version_grpc,
    version_pb2,
)
from vault_plugin_sdk.plugin.pb import backend_pb2 as pb
from vault_plugin_sdk.plugin.services import BackendService, HealthService
from vault_plugin_sdk.plugin.transport import GrpcServer, HostConnection, encode_headers


class EchoBackend(backend_grpc.BackendBase):
    """HandleRequest answers with the request's path repeated ``data`` times, the
    ``multiplex_id`` it was called with, and the size of the request it received."""

    async def HandleRequest(  # noqa: N802
        self, stream: Stream[pb.HandleRequestArgs, pb.HandleRequestReply]
    ) -> None:
        args = await stream.recv_message()
        assert args is not None
        if args.request.operation == "fail":
            raise RuntimeError("boom")
        if args.request.operation == "deny":
            raise GRPCError(Status.PERMISSION_DENIED, "no, see the policy")
        assert stream.metadata is not None
        mount = stream.metadata.get("multiplex_id", "")
        assert isinstance(mount, str)
        body = args.request.path * int(args.request.data or "1")
        reply = pb.Response(data=body, redirect=f"{mount}|{len(args.request.path)}")
        await stream.send_message(pb.HandleRequestReply(response=reply))

    async def SpecialPaths(self, stream: Stream[pb.Empty, pb.SpecialPathsReply]) -> None:  # noqa: N802
        raise NotImplementedError

    async def HandleExistenceCheck(  # noqa: N802
        self, stream: Stream[pb.HandleExistenceCheckArgs, pb.HandleExistenceCheckReply]
    ) -> None:
        raise NotImplementedError

    async def Cleanup(self, stream: Stream[pb.Empty, pb.Empty]) -> None:  # noqa: N802
        raise NotImplementedError

    async def InvalidateKey(self, stream: Stream[pb.InvalidateKeyArgs, pb.Empty]) -> None:  # noqa: N802
        raise NotImplementedError

    async def Setup(self, stream: Stream[pb.SetupArgs, pb.SetupReply]) -> None:  # noqa: N802
        raise NotImplementedError

    async def Initialize(  # noqa: N802
        self, stream: Stream[pb.InitializeArgs, pb.InitializeReply]
    ) -> None:
        raise NotImplementedError

    async def Type(self, stream: Stream[pb.Empty, pb.TypeReply]) -> None:  # noqa: N802
        raise NotImplementedError


class FastEchoBackend(EchoBackend):
    """Answers ``operation == "fast"`` synchronously; counts the handler runs."""

    handled = 0

    def __fast_unary__(self) -> dict[str, Callable[[Any], bytes | None]]:
        return {"/pb.Backend/HandleRequest": self._fast}

    @staticmethod
    def _fast(args: pb.HandleRequestArgs) -> bytes | None:
        if args.request.operation != "fast":
            return None
        reply = pb.HandleRequestReply(response=pb.Response(data="from bytes"))
        return reply.SerializeToString()

    async def HandleRequest(  # noqa: N802
        self, stream: Stream[pb.HandleRequestArgs, pb.HandleRequestReply]
    ) -> None:
        FastEchoBackend.handled += 1
        await super().HandleRequest(stream)


class Served:
    def __init__(self, server: GrpcServer, channel: Channel, broker: Broker) -> None:
        self.server = server
        self.channel = channel
        self.broker = broker
        self.backend = backend_grpc.BackendStub(channel)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    broker = Broker(None)
    server = GrpcServer([EchoBackend(), broker, HealthService()])
    socket = str(tmp_path / "plugin.sock")
    await server.start(path=socket)
    channel = Channel(path=socket)
    try:
        yield Served(server, channel, broker)
    finally:
        channel.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def _request(path: str, *, repeat: int = 1, operation: str = "read") -> pb.HandleRequestArgs:
    return pb.HandleRequestArgs(
        request=pb.Request(operation=operation, path=path, data=str(repeat))
    )


async def test_unary_call_sees_its_metadata(served: Served) -> None:
    reply = await served.backend.HandleRequest(
        _request("creds/x"), metadata={"multiplex_id": "mount-7"}
    )
    assert reply.response.data == "creds/x"
    assert reply.response.redirect == "mount-7|7"


async def test_large_request_and_reply_cross_frames_and_flow_control_windows(
    served: Served,
) -> None:
    # 100 KB in (several DATA frames), 2 MB out: more than the host's initial 64 KiB
    # window and many 16 KiB frames, so the reply must wait for WINDOW_UPDATEs.
    path = "p" * 100_000
    reply = await served.backend.HandleRequest(_request(path, repeat=20))
    assert reply.response.data == path * 20
    assert reply.response.redirect == "|100000"


async def test_concurrent_calls_on_one_connection_each_get_their_own_reply(
    served: Served,
) -> None:
    paths = [f"role-{i}" * (1 + i % 7) for i in range(60)]
    replies = await asyncio.gather(
        *(
            served.backend.HandleRequest(_request(p), metadata={"multiplex_id": str(i)})
            for i, p in enumerate(paths)
        )
    )
    assert [r.response.data for r in replies] == paths
    assert [r.response.redirect.split("|")[0] for r in replies] == [str(i) for i in range(60)]


async def test_grpc_error_status_and_message_reach_the_client(served: Served) -> None:
    with pytest.raises(GRPCError) as denied:
        await served.backend.HandleRequest(_request("x", operation="deny"))
    assert denied.value.status is Status.PERMISSION_DENIED
    assert denied.value.message == "no, see the policy"
    health = health_grpc.HealthStub(served.channel)
    with pytest.raises(GRPCError) as unknown:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert unknown.value.status is Status.NOT_FOUND


async def test_unexpected_exception_is_unknown_without_its_text(served: Served) -> None:
    with pytest.raises(GRPCError) as failed:
        await served.backend.HandleRequest(_request("x", operation="fail"))
    assert failed.value.status is Status.UNKNOWN
    assert "boom" not in (failed.value.message or "")
    # The connection is still good afterwards.
    assert (await served.backend.HandleRequest(_request("ok"))).response.data == "ok"


async def test_unknown_method_is_unimplemented(served: Served) -> None:
    with pytest.raises(GRPCError) as missing:
        await version_grpc.PluginVersionStub(served.channel).Version(version_pb2.Empty())
    assert missing.value.status is Status.UNIMPLEMENTED


async def test_client_streaming_call_delivers_each_message_as_it_arrives(
    served: Served,
) -> None:
    broker = goplugin_grpc.GRPCBrokerStub(served.channel)
    async with broker.StartStream.open() as stream:
        await stream.send_message(goplugin_pb2.ConnInfo(service_id=1, network="unix", address="/a"))
        first = await asyncio.wait_for(asyncio.shield(served.broker._slot(1)), 5)
        assert first == ("unix", "/a")
        await stream.send_message(goplugin_pb2.ConnInfo(service_id=2, network="unix", address="/b"))
        second = await asyncio.wait_for(asyncio.shield(served.broker._slot(2)), 5)
        assert second == ("unix", "/b")
        await stream.end()
        await stream.recv_initial_metadata()
        await stream.recv_trailing_metadata()
        assert stream.trailing_metadata is not None


async def test_server_streaming_call_answers_then_stays_open_until_shutdown(
    tmp_path: Path,
) -> None:
    server = GrpcServer([HealthService()])
    socket = str(tmp_path / "s.sock")
    await server.start(path=socket)
    channel = Channel(path=socket)
    try:
        health = health_grpc.HealthStub(channel)
        async with health.Watch.open() as stream:
            await stream.send_message(health_pb2.HealthCheckRequest(service="plugin"), end=True)
            status = await stream.recv_message()
            assert status is not None
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            server.close()
            # Shutdown ends the open stream instead of waiting for it forever.
            await asyncio.wait_for(server.wait_closed(), 5)
            with pytest.raises(StreamTerminatedError):
                await asyncio.wait_for(stream.recv_message(), 5)
    finally:
        channel.close()


async def test_fast_answers_skip_the_handler_and_others_still_reach_it(
    tmp_path: Path,
) -> None:
    server = GrpcServer([FastEchoBackend()])
    socket = str(tmp_path / "f.sock")
    await server.start(path=socket)
    channel = Channel(path=socket)
    try:
        stub = backend_grpc.BackendStub(channel)
        FastEchoBackend.handled = 0
        fast = await stub.HandleRequest(_request("x", operation="fast"))
        assert fast.response.data == "from bytes"
        assert FastEchoBackend.handled == 0
        slow = await stub.HandleRequest(_request("y"))
        assert slow.response.data == "y"
        assert FastEchoBackend.handled == 1
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def test_backend_service_answers_resolve_path_from_prebuilt_bytes(
    tmp_path: Path,
) -> None:
    async def factory(config: BackendConfig) -> Backend:
        raise AssertionError("resolve-path must not need a mount")

    server = GrpcServer([BackendService(factory, Broker(None))])
    socket = str(tmp_path / "r.sock")
    await server.start(path=socket)
    channel = Channel(path=socket)
    try:
        stub = backend_grpc.BackendStub(channel)
        reply = await stub.HandleRequest(_request("creds/x", operation="resolve-path"))
        assert reply.err.err_type == ERR_UNSUPPORTED_OPERATION
        # Any other operation goes to the handler, which finds no mount set up.
        other = await stub.HandleRequest(_request("creds/x"))
        assert other.err.err_msg == "backend is not set up"
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


def test_pre_encoded_header_blocks_decode_without_any_table_state() -> None:
    from hpack import Decoder

    block = encode_headers([(":status", "200"), ("grpc-message", "x" * 300)])
    for _ in range(2):  # the same bytes decode the same way at any point of a connection
        decoder = Decoder()
        decoded: object = decoder.decode(block)
        assert decoded == [(":status", "200"), ("grpc-message", "x" * 300)]
        assert len(decoder.header_table.dynamic_entries) == 0


async def test_header_blocks_remembered_by_bytes_mean_what_a_fresh_decoder_says() -> None:
    from hpack import Decoder, Encoder

    conn = HostConnection(GrpcServer([]))
    reference = Decoder()
    encoder = Encoder()
    call = [(":method", "POST"), (":path", "/pb.Backend/HandleRequest")]
    blocks = [
        encoder.encode([*call, ("multiplex_id", "m1")]),  # inserts into the dynamic table
        encoder.encode([*call, ("multiplex_id", "m1")]),  # indexed only: remembered
        encoder.encode([*call, ("multiplex_id", "m1")]),  # the same bytes: from memory
        encoder.encode([*call, ("multiplex_id", "m2")]),  # inserts: indexes shift
    ]
    assert blocks[1] == blocks[2]
    blocks.append(blocks[1])  # the old bytes now point at other entries
    blocks.append(encoder.encode([*call, ("multiplex_id", "m1")]))
    for block in blocks:
        fields = cast(list[tuple[str, str]], reference.decode(block))
        path, metadata = conn._decode(block)
        assert path == dict(fields).get(":path", "")
        assert metadata == {name: value for name, value in fields if not name.startswith(":")}
    # The repeated block was answered from memory at least once.
    assert conn._header_blocks.remembered


class _RecordingTransport(asyncio.Transport):
    """Keeps each write whole, to see which frames left together."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        pass


def _frames(data: bytes) -> list[tuple[int, int, int]]:
    """(type, flags, stream id) of each frame in ``data``."""
    found, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        stream = int.from_bytes(data[offset + 5 : offset + 9], "big")
        found.append((data[offset + 3], data[offset + 4], stream))
        offset += 9 + length
    return found


def _echo_call(stream_id: int) -> bytes:
    block = encode_headers(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/pb.Backend/HandleRequest"),
            (":authority", "plugin"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    body = http2.grpc_message(_request("p").SerializeToString())
    return http2.frame(http2.HEADERS, http2.END_HEADERS, stream_id, block) + http2.frame(
        http2.DATA, http2.END_STREAM, stream_id, body
    )


async def _connected() -> tuple[HostConnection, _RecordingTransport]:
    conn = HostConnection(GrpcServer([EchoBackend()]))
    transport = _RecordingTransport()
    conn.connection_made(transport)
    conn.data_received(http2.PREFACE + http2.frame(http2.SETTINGS, 0, 0))
    await asyncio.sleep(0)
    transport.writes.clear()
    return conn, transport


async def test_a_ping_that_comes_with_a_call_is_answered_after_its_reply_in_one_write() -> None:
    # The host's gRPC sends a bandwidth probe (PING) with the data it receives. Answered in
    # the write that carries the replies, and after them, the probe covers those replies;
    # answered on its own, the next reply starts a probe that travels alone.
    conn, transport = await _connected()
    conn.data_received(http2.frame(http2.PING, 0, 0, b"probe-01") + _echo_call(1))
    for _ in range(3):
        await asyncio.sleep(0)
    assert [_frames(write) for write in transport.writes] == [
        [
            (http2.HEADERS, http2.END_HEADERS, 1),
            (http2.DATA, 0, 1),
            (http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1),
            (http2.PING, http2.ACK, 0),
        ]
    ]
    assert transport.writes[0].endswith(b"probe-01")


async def test_a_ping_on_its_own_is_answered_in_the_next_loop_turn() -> None:
    conn, transport = await _connected()
    conn.data_received(http2.frame(http2.PING, 0, 0, b"alone-01"))
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [http2.frame(http2.PING, http2.ACK, 0, b"alone-01")]


async def test_a_call_that_completes_in_its_first_step_is_written_in_that_loop_turn() -> None:
    conn, transport = await _connected()
    conn.data_received(_echo_call(1))
    await asyncio.sleep(0)  # one loop turn: the call's first step, then the write
    assert [_frames(write) for write in transport.writes] == [
        [
            (http2.HEADERS, http2.END_HEADERS, 1),
            (http2.DATA, 0, 1),
            (http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1),
        ]
    ]
