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
``StartStream``, ``StreamStdio``, health ``Watch``) are supported with flow control.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, cast

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from hpack import Decoder
from hpack.exceptions import HPACKError

from .servable import Servable

log = logging.getLogger("sdk.plugin")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 1, 4, 5
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, COMPRESSION_ERROR = 0, 1, 3, 8, 9

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
# What we let the host send before it must wait for a WINDOW_UPDATE, per stream and for the
# connection; replenished once half is used.
RECEIVE_WINDOW = 1 << 24
HEADER_CACHE_SIZE = 64  # distinct request header blocks remembered per connection
MAX_MESSAGE = 64 << 20  # a request message larger than this is refused (RESOURCE_EXHAUSTED)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(fields: Iterable[tuple[str, str]]) -> bytes:
    """A header block of literal fields without indexing and without Huffman coding: it
    touches no HPACK dynamic table, so the same bytes are valid at any point of a
    connection and can be built once."""
    block = bytearray()
    for name, value in fields:
        raw_name, raw_value = name.encode(), value.encode()
        block += b"\x00" + _hpack_int(len(raw_name), 7) + raw_name
        block += _hpack_int(len(raw_value), 7) + raw_value
    return bytes(block)


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


class ServerStream:
    """One call, as a handler sees it (the subset of ``grpclib.server.Stream`` we use)."""

    __slots__ = (
        "_conn",
        "_handler",
        "_inbox",
        "_pending",
        "_window_open",
        "ended",
        "headers_sent",
        "id",
        "metadata",
        "path",
        "received",
        "reply",
        "send_window",
        "task",
        "unread",
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
        data = b"\x00" + len(body).to_bytes(4, "big") + body
        if not self.streams_out:
            self.reply.append(data)
            return
        await self.send_initial_metadata()
        await self.send_data(data)

    async def send_data(self, data: bytes) -> None:
        """DATA frames for ``data``, within the host's flow-control windows."""
        conn = self._conn
        view = memoryview(data)
        while view:
            allowed = min(len(view), conn.send_window, self.send_window, conn.peer_max_frame)
            if allowed <= 0:
                await self.window_opened()
                continue
            conn.send_window -= allowed
            self.send_window -= allowed
            conn.send(frame(DATA, 0, self.id, bytes(view[:allowed])))
            view = view[allowed:]

    async def window_opened(self) -> None:
        if self._conn.closed:
            raise ConnectionError("connection closed")
        self._window_open = asyncio.Event()
        await self._window_open.wait()

    def open_window(self) -> None:
        if self._window_open is not None:
            self._window_open.set()
            self._window_open = None


class HostConnection(asyncio.Protocol):
    """One host connection: frames in, handler tasks, frames out."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._mapping = server.mapping
        self._fast = server.fast
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = Decoder()
        self._header_cache: dict[bytes, tuple[str, dict[str, str]]] = {}
        self._streams: dict[int, ServerStream] = {}
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_end_stream = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._unread = 0  # connection-level bytes received since the last WINDOW_UPDATE
        self._last_stream = 0
        self.closed = False
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME

    # -- output ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes; everything queued in one event-loop turn leaves in one write."""
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        settings = SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + RECEIVE_WINDOW.to_bytes(
            4, "big"
        )
        self.send(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (RECEIVE_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
            stream.open_window()
        self._streams.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._preface_seen:
            if len(buffer) < len(PREFACE):
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 client")
                return
            del buffer[: len(PREFACE)]
            self._preface_seen = True
        offset = 0
        size = len(buffer)
        try:
            while size - offset >= 9:
                length = int.from_bytes(buffer[offset : offset + 3], "big")
                end = offset + 9 + length
                if end > size:
                    break
                kind = buffer[offset + 3]
                flags = buffer[offset + 4]
                stream_id = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
                payload = bytes(buffer[offset + 9 : end])
                offset = end
                self._frame(kind, flags, stream_id, payload)
                if self.closed:
                    return
        finally:
            if offset:
                del buffer[:offset]

    # -- frames ----------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "expected CONTINUATION")
            return
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._header_stream = stream_id
            self._header_end_stream = bool(flags & END_STREAM)
            if flags & END_HEADERS:
                self._headers(stream_id, payload, self._header_end_stream)
            else:
                self._header_block = bytearray(payload)
        elif kind == CONTINUATION:
            if self._header_block is None or stream_id != self._header_stream:
                self._fail(PROTOCOL_ERROR, "unexpected CONTINUATION")
                return
            self._header_block += payload
            if flags & END_HEADERS:
                block = bytes(self._header_block)
                self._header_block = None
                self._headers(stream_id, block, self._header_end_stream)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
        elif kind == PING:
            if not flags & ACK:
                self.send(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self._streams.pop(stream_id, None)
            if stream is not None and stream.task is not None:
                stream.task.cancel()
        elif kind == GOAWAY:
            log.debug("host sent GOAWAY")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 allows.

    def _settings(self, payload: bytes) -> None:
        for index in range(0, len(payload) - 5, 6):
            key = int.from_bytes(payload[index : index + 2], "big")
            value = int.from_bytes(payload[index + 2 : index + 6], "big")
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    stream.open_window()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self.peer_max_frame = value
            # HEADER_TABLE_SIZE limits the host's decoder; we never index, so it is moot.
        self.send(frame(SETTINGS, ACK, 0))

    def _window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self.send_window += increment
            for waiting in self._streams.values():
                waiting.open_window()
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.send_window += increment
            stream.open_window()

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        # Flow control counts the whole payload, padding included, even for a stream that
        # is gone: the connection window must be given back either way.
        self._unread += len(payload)
        if self._unread >= RECEIVE_WINDOW // 2:
            self.send(frame(WINDOW_UPDATE, 0, 0, self._unread.to_bytes(4, "big")))
            self._unread = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.unread += len(payload)
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.received += payload
        end = bool(flags & END_STREAM)
        if stream.unread >= RECEIVE_WINDOW // 2 and not end:
            self.send(frame(WINDOW_UPDATE, 0, stream_id, stream.unread.to_bytes(4, "big")))
            stream.unread = 0
        self._deliver(stream, end)

    def _decode(self, block: bytes) -> tuple[str, dict[str, str]]:
        """``(:path, metadata)`` of a request header block.

        The host sends the same few bytes for most calls (every field indexed in the HPACK
        tables), and decoding such a block leaves the tables as they were, so its meaning
        stays the same until some other block changes them. Those blocks are remembered
        by their bytes; anything that changes the dynamic table forgets them all.
        """
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached[0], dict(cached[1])
        table = self._decoder.header_table.dynamic_entries
        size, head = len(table), (table[0] if table else None)
        fields = cast(list[tuple[str, str]], self._decoder.decode(block))
        path = ""
        metadata: dict[str, str] = {}
        for name, value in fields:
            if name == ":path":
                path = value
            elif not name.startswith(":"):
                metadata[name] = value
        if len(table) == size and (table[0] if table else None) is head:
            if len(self._header_cache) >= HEADER_CACHE_SIZE:
                self._header_cache.clear()
            self._header_cache[block] = (path, metadata)
            return path, dict(metadata)
        self._header_cache.clear()
        return path, metadata

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
                    self._reply(stream.id, b"\x00" + len(answer).to_bytes(4, "big") + answer)
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

    def _fail(self, code: int, why: str) -> None:
        log.warning("closing the host connection: %s", why)
        self.goaway(code)
        self._flush()
        if self._transport is not None:
            self._transport.close()
        self.closed = True

    def goaway(self, code: int = NO_ERROR) -> None:
        """Tell the host no new calls will be served on this connection."""
        self.send(
            frame(GOAWAY, 0, 0, self._last_stream.to_bytes(4, "big") + code.to_bytes(4, "big"))
        )

    def tasks(self, *, unary: bool) -> list[asyncio.Task[None]]:
        """Handler tasks in flight: of unary calls, or of streaming ones."""
        return [
            stream.task
            for stream in self._streams.values()
            if stream.task is not None and stream.unary == unary
        ]

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()


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
