"""A gRPC server specialised for what a go-plugin host sends: HTTP/2 framed by hand.

The host (grpc-go) keeps one HTTP/2 connection to the plugin and, for every request of a
user, makes two unary calls on it (``resolve-path``, then the request). A general HTTP/2
stack (h2) and gRPC server (grpclib) spend most of the plugin's CPU on that path: a state
machine per frame, events, header encoding per reply, three socket writes per reply. This
server does only what the host needs:

* frames are parsed with slicing and ``int.from_bytes``; request header blocks go through
  an HPACK decoder (``hpack``, the decoder h2 uses) once per distinct block while the
  tables stay unchanged (the host repeats the same few bytes for most calls);
* response headers and trailers are encoded once (literal fields, no dynamic table, so the
  bytes never depend on connection state);
* a unary reply is one write of HEADERS + DATA + trailers, and everything produced in one
  event-loop turn (replies, PING and SETTINGS acks, WINDOW_UPDATEs) leaves in one write,
  so in one TLS record where it fits;
* the receive windows are large and replenished in bulk, so WINDOW_UPDATEs are rare.

It serves the same service objects as grpclib (their ``__mapping__``), and hands handlers
a stream with the part of grpclib's ``Stream`` API they use (``recv_message``,
``send_message``, ``send_initial_metadata``, ``metadata``, ``async for``), so the same
handlers run under grpclib in the in-process test driver. Streaming calls (the broker's
``StartStream``, ``StreamStdio``, health ``Watch``) are supported with flow control. The
framing itself (frames, header blocks, SETTINGS, PING, windows) lives in ``http2``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, cast

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from hpack.exceptions import HPACKError

from .http2 import (
    CANCEL,
    COMPRESSION_ERROR,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    MAX_MESSAGE,
    NO_ERROR,
    PROTOCOL_ERROR,
    RST_STREAM,
    FlowControlled,
    FramedConnection,
    HeaderBlocks,
    encode_headers,
    frame,
    grpc_message,
)
from .servable import Servable

__all__ = ["GrpcServer", "HostConnection", "ServerStream", "encode_headers"]

log = logging.getLogger("sdk.plugin")


# grpc-message is percent-encoded: printable ASCII except "%" stays as it is (as grpclib).
_UNQUOTED = "".join(chr(i) for i in range(0x20, 0x7F) if chr(i) != "%")


def encode_grpc_message(message: str) -> str:
    """``message`` as the ``grpc-message`` trailer carries it."""
    # Imported on this path only (a reply with an error): urllib.parse imports ipaddress,
    # about 2 ms of every start otherwise.
    from urllib.parse import quote

    return quote(message, safe=_UNQUOTED, encoding="utf-8")


RESPONSE_HEADERS = encode_headers([(":status", "200"), ("content-type", "application/grpc")])
OK_TRAILERS = encode_headers([("grpc-status", "0")])


def status_block(status: Status, message: str | None, *, with_headers: bool) -> bytes:
    """Trailers (or a trailers-only response) carrying a non-OK status."""
    fields = [(":status", "200"), ("content-type", "application/grpc")] if with_headers else []
    fields.append(("grpc-status", str(status.value)))
    if message:
        fields.append(("grpc-message", encode_grpc_message(message)))
    return encode_headers(fields)


# A synchronous answer to a unary call: the serialized reply, or ``None`` to run the handler.
FastAnswer = Callable[[Any], bytes | None]


def fast_answers(service: object) -> dict[str, FastAnswer]:
    """A service's synchronous answers (its optional ``__fast_unary__``), by method path.

    The server tries them before it starts a handler task; a call they answer costs no
    task, no coroutine and no reply serialization (OpenBao 2.7's ``resolve-path``, sent
    before every request, is one).
    """
    method = getattr(service, "__fast_unary__", None)
    return dict(method()) if method is not None else {}


class ServerStream(FlowControlled):
    """One call, as a handler sees it (the subset of ``grpclib.server.Stream`` we use)."""

    __slots__ = (
        "_conn",
        "_handler",
        "_inbox",
        "_pending",
        "ended",
        "headers_sent",
        "metadata",
        "path",
        "received",
        "reply",
        "task",
    )

    def __init__(
        self,
        conn: HostConnection,
        stream_id: int,
        path: str,
        handler: Handler,
        metadata: dict[str, str],
    ) -> None:
        self._conn = conn
        self._handler = handler
        self.path = path
        self.id = stream_id
        self.metadata = metadata
        self.received = bytearray()  # request bytes not yet cut into messages
        self.unread = 0  # bytes received since the last stream WINDOW_UPDATE
        self.ended = False  # the host sent END_STREAM
        self.send_window = conn.peer_initial_window
        self._window_open: asyncio.Event | None = None
        self.headers_sent = False
        self.reply: list[bytes] = []  # unary replies, sent with the trailers in one write
        self.task: asyncio.Task[None] | None = None
        self._pending: list[Any] = []  # messages decoded, not yet received by the handler
        self._inbox: asyncio.Queue[Any] | None = None
        if handler.cardinality in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM):
            self._inbox = asyncio.Queue()

    @property
    def unary(self) -> bool:
        return self._handler.cardinality is Cardinality.UNARY_UNARY

    @property
    def streams_out(self) -> bool:
        return self._handler.cardinality in (Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM)

    def feed(self, end: bool) -> None:
        """Cut complete gRPC messages out of the received bytes; ``end``: no more follow."""
        buffer = self.received
        offset = 0
        while len(buffer) - offset >= 5:
            if buffer[offset]:
                raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
            size = int.from_bytes(buffer[offset + 1 : offset + 5], "big")
            if size > MAX_MESSAGE:
                raise GRPCError(Status.RESOURCE_EXHAUSTED, "request message too large")
            if len(buffer) - offset - 5 < size:
                break
            body = bytes(buffer[offset + 5 : offset + 5 + size])
            offset += 5 + size
            message = self._handler.request_type.FromString(body)
            if self._inbox is not None:
                self._inbox.put_nowait(message)
            else:
                self._pending.append(message)
        if offset:
            del buffer[:offset]
        if end:
            self.ended = True
            if self._inbox is not None:
                self._inbox.put_nowait(None)

    async def recv_message(self) -> Any:
        """The next request message, or ``None`` once the host has sent them all."""
        if self._inbox is not None:
            return await self._inbox.get()
        return self._pending.pop(0) if self._pending else None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while (message := await self.recv_message()) is not None:
            yield message

    async def send_initial_metadata(self) -> None:
        """Send the response headers now (streaming replies); unary replies wait."""
        if not self.headers_sent:
            self.headers_sent = True
            self._conn.send(frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS))

    async def send_message(self, message: Any) -> None:
        """Send one reply message (buffered for unary calls until the handler returns)."""
        body = message.SerializeToString()
        data = grpc_message(body)
        if not self.streams_out:
            self.reply.append(data)
            return
        await self.send_initial_metadata()
        await self.send_data(data)

    async def send_data(self, data: bytes) -> None:
        """DATA frames for ``data``, within the host's flow-control windows (the trailers
        end the stream); ``ConnectionError`` if the connection closes first."""
        conn = self._conn
        if not await conn.send_data(self, data, end_stream=False, stop=lambda: conn.closed):
            raise ConnectionError("connection closed")


def _request_fields(fields: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
    """``(:path, metadata)`` of a request's header fields."""
    path = ""
    metadata: dict[str, str] = {}
    for name, value in fields:
        if name == ":path":
            path = value
        elif not name.startswith(":"):
            metadata[name] = value
    return path, metadata


class HostConnection(FramedConnection):
    """One host connection: frames in, handler tasks, frames out."""

    expects_preface = True

    def __init__(self, server: GrpcServer) -> None:
        super().__init__()
        self._server = server
        self._mapping = server.mapping
        self._fast = server.fast
        self._header_blocks = HeaderBlocks(_request_fields)
        self._streams: dict[int, ServerStream] = {}
        self._last_stream = 0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self.send(self.open_windows())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
            stream.open_window()
        self._streams.clear()

    # -- frames ----------------------------------------------------------------------------

    def _flow_controlled(self) -> dict[int, ServerStream]:
        return self._streams

    def _reset(self, stream_id: int, code: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()

    def _stream_data(self, stream_id: int, payload: bytes, received: int, end: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.received += payload
        stream.unread = self.consumed(stream_id, stream.unread + received, end)
        self._deliver(stream, end)

    def _decode(self, block: bytes) -> tuple[str, dict[str, str]]:
        """``(:path, metadata)`` of a request header block (the metadata a fresh dict)."""
        path, metadata = self._header_blocks.decode(block)
        return path, dict(metadata)

    def _headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        try:
            path, metadata = self._decode(block)
        except HPACKError:
            self._fail(COMPRESSION_ERROR, "bad header block")
            return
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the host: only END_STREAM matters
            if end_stream:
                self._deliver(stream, True)
            return
        if stream_id <= self._last_stream or not stream_id & 1:
            self._fail(PROTOCOL_ERROR, "bad stream id")
            return
        self._last_stream = stream_id
        handler = self._mapping.get(path)
        if handler is None:
            block = status_block(
                Status.UNIMPLEMENTED, f"Method not found: {path}", with_headers=True
            )
            self.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
            if not end_stream:
                self.send(frame(RST_STREAM, 0, stream_id, NO_ERROR.to_bytes(4, "big")))
            return
        stream = ServerStream(self, stream_id, path, handler, metadata)
        self._streams[stream_id] = stream
        if stream._inbox is not None:  # streaming requests: the handler starts now
            stream.task = self._loop.create_task(self._run(stream))
        if end_stream:
            self._deliver(stream, True)

    def _deliver(self, stream: ServerStream, end: bool) -> None:
        try:
            stream.feed(end)
        except GRPCError as exc:
            self._streams.pop(stream.id, None)
            if stream.task is not None:
                stream.task.cancel()
            self._finish(stream, exc.status, exc.message)
            if not end:
                self.send(frame(RST_STREAM, 0, stream.id, CANCEL.to_bytes(4, "big")))
            return
        if end and stream.task is None:  # unary requests: the handler starts when complete
            fast = self._fast.get(stream.path)
            if fast is not None and len(stream._pending) == 1:
                answer = fast(stream._pending[0])
                if answer is not None:
                    self._streams.pop(stream.id, None)
                    self._reply(stream.id, grpc_message(answer))
                    return
            stream.task = self._loop.create_task(self._run(stream))

    def _reply(self, stream_id: int, body: bytes) -> None:
        """A whole unary reply (headers, one DATA frame, trailers) in one queued write."""
        self.send_window -= len(body)
        self.send(
            frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS)
            + frame(DATA, 0, stream_id, body)
            + frame(HEADERS, END_HEADERS | END_STREAM, stream_id, OK_TRAILERS)
        )

    # -- calls -----------------------------------------------------------------------------

    async def _run(self, stream: ServerStream) -> None:
        try:
            await stream._handler.func(stream)
        except asyncio.CancelledError:
            self._streams.pop(stream.id, None)
            raise
        except GRPCError as exc:
            self._streams.pop(stream.id, None)
            self._finish(stream, exc.status, exc.message)
            return
        except Exception:
            log.error("gRPC handler failed", exc_info=True)
            self._streams.pop(stream.id, None)
            self._finish(stream, Status.UNKNOWN, "Internal Server Error")
            return
        if stream.reply:
            body = b"".join(stream.reply)
            stream.reply.clear()
            if (
                len(body) <= min(self.send_window, stream.send_window, self.peer_max_frame)
                and not stream.headers_sent
            ):
                # The common case: headers, reply and trailers in one write.
                self._streams.pop(stream.id, None)
                self._reply(stream.id, body)
                return
            await stream.send_initial_metadata()
            try:
                await stream.send_data(body)
            except ConnectionError:
                return
        self._streams.pop(stream.id, None)
        self._finish(stream, Status.OK, None)

    def _finish(self, stream: ServerStream, status: Status, message: str | None) -> None:
        if self.closed:
            return
        if status is Status.OK:
            if not stream.headers_sent:
                self.send(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
            block = OK_TRAILERS
        else:
            block = status_block(status, message, with_headers=not stream.headers_sent)
        stream.headers_sent = True
        self.send(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))

    # -- shutdown --------------------------------------------------------------------------

    def _last_peer_stream(self) -> int:
        return self._last_stream

    def tasks(self, *, unary: bool) -> list[asyncio.Task[None]]:
        """Handler tasks in flight: of unary calls, or of streaming ones."""
        return [
            stream.task
            for stream in self._streams.values()
            if stream.task is not None and stream.unary == unary
        ]


class GrpcServer:
    """Serves ``services`` on a unix socket; the start/close API of ``grpclib``'s Server."""

    def __init__(self, services: Iterable[Servable]) -> None:
        self.mapping: dict[str, Handler] = {}
        self.fast: dict[str, FastAnswer] = {}
        for service in services:
            self.mapping.update(service.__mapping__())
            self.fast.update(fast_answers(service))
        self.connections: set[HostConnection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, *, path: str, ssl: ssl.SSLContext | None = None) -> None:
        """Listen on the unix socket ``path`` (with TLS when ``ssl`` is given)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: HostConnection(self), path, ssl=ssl)

    def close(self) -> None:
        """Stop accepting connections and tell connected hosts to go away."""
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            conn.goaway()

    async def wait_closed(self) -> None:
        """Let unary calls in flight finish, end streaming ones, then close connections."""
        for conn in list(self.connections):
            unary = conn.tasks(unary=True)
            if unary:
                await asyncio.wait(unary, timeout=1.0)
            for task in conn.tasks(unary=False):
                task.cancel()
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
