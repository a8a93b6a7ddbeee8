"""A unary gRPC client for the servers the host opens through the broker (Storage, SystemView).

A mount's storage and system view are gRPC services the host serves back to the plugin,
one server per mount, reached at the address the broker announced. Every call the plugin
makes there is unary, so this client does only that, on the framing the plugin's own
server uses (``http2``):

* the request header block of each method is encoded once (literal fields, no dynamic
  table) and a call that fits the windows is one queued write of HEADERS + DATA;
* reply header blocks go through an HPACK decoder once per distinct block while the
  tables stay unchanged (grpc-go repeats the same bytes for most replies);
* no per-frame events, no closed-stream memory: a frame for a stream the client no longer
  waits on is dropped (its bytes still count against the connection's window).

A general client (grpclib over h2) spent about two thirds of an SDK plugin's CPU on the
one storage call of a read (py-spy, docs/performance.md). Errors keep grpclib's shapes:
a non-OK status raises ``GRPCError``, a lost or refused connection an ``OSError``; the
next call after a lost connection dials again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from grpclib.const import Status
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
    PREFACE,
    RST_STREAM,
    FlowControlled,
    FramedConnection,
    HeaderBlocks,
    encode_headers,
    frame,
    grpc_message,
)

if TYPE_CHECKING:
    from google.protobuf.message import Message

Reply = TypeVar("Reply", bound="Message")

AUTHORITY = "localhost"  # the name the host's broker certificate is checked against
SETTINGS_WAIT_SECONDS = 5.0  # the broker's own limit for the host to announce a server
REFUSED_STREAM = 7
MAX_STREAM_ID = (1 << 31) - 1
# RST_STREAM codes as grpc-go maps them to a status (anything else is INTERNAL).
_RESET_STATUS = {REFUSED_STREAM: Status.UNAVAILABLE, CANCEL: Status.CANCELLED}


def request_headers(path: str, *, scheme: str) -> bytes:
    """The header block of a unary call to ``path`` (built once per method)."""
    return encode_headers(
        [
            (":method", "POST"),
            (":scheme", scheme),
            (":path", path),
            (":authority", AUTHORITY),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )


def decode_grpc_message(value: str) -> str:
    """A ``grpc-message`` trailer's text (percent-encoded on the wire)."""
    if "%" not in value:
        return value
    from urllib.parse import unquote  # only for error text

    return unquote(value, errors="replace")


class _Call(FlowControlled):
    """One unary call in flight."""

    __slots__ = ("done", "received")

    def __init__(self, stream_id: int, send_window: int, done: asyncio.Future[bytes]) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.done = done
        self.received = bytearray()
        self.unread = 0  # bytes received since the last stream WINDOW_UPDATE
        self._window_open: asyncio.Event | None = None


def _reply_fields(fields: list[tuple[str, str]]) -> dict[str, str]:
    return dict(fields)


def _reply_message(received: bytearray) -> bytes:
    """The one message of a unary reply's DATA."""
    if len(received) < 5:
        raise GRPCError(Status.UNKNOWN, "the reply carried no message")
    if received[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed replies are not supported")
    size = int.from_bytes(received[1:5], "big")
    if len(received) != 5 + size:
        raise GRPCError(Status.UNKNOWN, "a unary reply must carry exactly one message")
    return bytes(received[5:])


class ClientConnection(FramedConnection):
    """One connection to a host server: unary calls out, their replies in."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._blocks = HeaderBlocks(_reply_fields)
        self._slot_free: asyncio.Event | None = None
        self.going_away = False
        # Set at the host's first SETTINGS: until then its limits (concurrent streams, frame
        # size, windows) are unknown, so no call starts before it.
        self.settled: asyncio.Future[None] = self._loop.create_future()

    @property
    def usable(self) -> bool:
        """Whether new calls may start here."""
        return not self.closed and not self.going_away

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.send(PREFACE + self.open_windows())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.settled.done():
            self.settled.set_exception(
                ConnectionError("the host's server closed the connection before its SETTINGS")
            )
            self.settled.exception()  # whoever waits still gets it; nobody may be waiting
        self._fail_calls(lambda call: True, "the connection to the host's server was lost")
        self._free_slot()

    # -- calls -----------------------------------------------------------------------------

    async def call(self, headers: bytes, body: bytes) -> bytes:
        """Send one request message on a new stream; its reply message's bytes."""
        while self.peer_max_streams is not None and len(self._calls) >= self.peer_max_streams:
            if not self.usable:
                break
            self._slot_free = self._slot_free or asyncio.Event()
            await self._slot_free.wait()
        if not self.usable:
            raise ConnectionError("the connection to the host's server is closing")
        stream_id = self._next_id
        self._next_id += 2
        if self._next_id > MAX_STREAM_ID:  # ids are never reused: the next call redials
            self.going_away = True  # and this connection closes after its last call
        call = _Call(stream_id, self.peer_initial_window, self._loop.create_future())
        self._calls[stream_id] = call
        data = grpc_message(body)
        try:
            if len(data) <= min(self.send_window, call.send_window, self.peer_max_frame):
                self.send_window -= len(data)
                call.send_window -= len(data)
                self.send(
                    frame(HEADERS, END_HEADERS, stream_id, headers)
                    + frame(DATA, END_STREAM, stream_id, data)
                )
            else:
                self.send(frame(HEADERS, END_HEADERS, stream_id, headers))
                # Stops early if the call ended: the host may answer before reading it all.
                await self.send_data(call, data, end_stream=True, stop=call.done.done)
            return await call.done
        except asyncio.CancelledError:
            if stream_id in self._calls:
                if not self.closed:
                    self.send(frame(RST_STREAM, 0, stream_id, CANCEL.to_bytes(4, "big")))
                self._end(call)
            if call.done.done() and not call.done.cancelled():
                call.done.exception()  # retrieved: the caller is gone
            raise

    def _end(self, call: _Call) -> None:
        self._calls.pop(call.id, None)
        self._free_slot()
        if self.going_away and not self._calls:
            self.close()

    def retire(self) -> None:
        """Start no more calls here; close once the calls in flight have finished."""
        self.going_away = True
        if not self._calls:
            self.close()

    def _free_slot(self) -> None:
        if self._slot_free is not None:
            self._slot_free.set()
            self._slot_free = None

    def _fail_calls(self, which: Callable[[_Call], bool], why: str) -> None:
        for call in [call for call in self._calls.values() if which(call)]:
            self._calls.pop(call.id, None)
            if not call.done.done():
                call.done.set_exception(ConnectionError(why))
            call.open_window()

    # -- frames ----------------------------------------------------------------------------

    def _settings(self, payload: bytes) -> None:
        super()._settings(payload)
        if not self.settled.done():
            self.settled.set_result(None)
        self._free_slot()  # the host may have raised its limit on concurrent streams

    def _headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        try:
            fields = self._blocks.decode(block)
        except HPACKError:
            self._fail(COMPRESSION_ERROR, "bad header block from the host's server")
            self._fail_calls(lambda call: True, "bad header block from the host's server")
            return
        call = self._calls.get(stream_id)
        if call is None:
            return
        http_status = fields.get(":status")
        if http_status is not None and http_status != "200":
            self._finish(call, GRPCError(Status.UNKNOWN, f"HTTP status {http_status}"))
            return
        grpc_status = fields.get("grpc-status")
        if grpc_status is None:
            if end_stream:
                self._finish(call, GRPCError(Status.UNKNOWN, "the reply ended without a status"))
            return
        try:
            status = Status(int(grpc_status))
        except ValueError:
            status = Status.UNKNOWN
        if status is not Status.OK:
            message = decode_grpc_message(fields.get("grpc-message", ""))
            self._finish(call, GRPCError(status, message or None))
            return
        try:
            self._finish(call, _reply_message(call.received))
        except GRPCError as exc:
            self._finish(call, exc)

    def _finish(self, call: _Call, outcome: bytes | GRPCError) -> None:
        self._end(call)
        if call.done.done():
            return
        if isinstance(outcome, GRPCError):
            call.done.set_exception(outcome)
        else:
            call.done.set_result(outcome)
        call.open_window()

    def _stream_data(self, stream_id: int, payload: bytes, received: int, end: bool) -> None:
        call = self._calls.get(stream_id)
        if call is None:
            return
        call.received += payload
        call.unread = self.consumed(stream_id, call.unread + received, end)
        if len(call.received) > MAX_MESSAGE + 5:
            self.send(frame(RST_STREAM, 0, stream_id, CANCEL.to_bytes(4, "big")))
            self._finish(call, GRPCError(Status.RESOURCE_EXHAUSTED, "reply message too large"))
        elif end:
            self._finish(call, GRPCError(Status.UNKNOWN, "the reply ended without a status"))

    def _reset(self, stream_id: int, code: int) -> None:
        call = self._calls.get(stream_id)
        if call is not None:
            status = _RESET_STATUS.get(code, Status.INTERNAL)
            self._finish(call, GRPCError(status, f"stream reset by the host (HTTP/2 code {code})"))

    def _going_away(self, last_stream_id: int, code: int) -> None:
        # Calls above the last stream the host will process never ran: they fail at once,
        # and the channel dials a new connection for the next call. Those below finish.
        self._fail_calls(lambda call: call.id > last_stream_id, "the host's server is going away")
        self.retire()
        self._free_slot()

    def _flow_controlled(self) -> dict[int, _Call]:
        return self._calls


class BrokerChannel:
    """Unary calls to one host server (a mount's Storage and SystemView).

    Connects at the first call and again at the first call after the connection is lost
    or the host sends GOAWAY; ``close`` ends it.
    """

    def __init__(self, network: str, address: str, tls: ssl.SSLContext | None) -> None:
        self._network = network
        self._address = address
        self._tls = tls
        self._scheme = "https" if tls is not None else "http"
        self._headers: dict[str, bytes] = {}
        self._connection: ClientConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    @property
    def address(self) -> tuple[str, str]:
        """``(network, address)`` of the host's server."""
        return self._network, self._address

    async def unary(self, path: str, request: Message, reply_type: type[Reply]) -> Reply:
        """Call the unary method ``path`` (``/package.Service/Method``) with ``request``."""
        headers = self._headers.get(path)
        if headers is None:
            headers = self._headers[path] = request_headers(path, scheme=self._scheme)
        connection = self._connection
        if connection is None or not connection.usable:
            connection = await self._connect()
        body = await connection.call(headers, request.SerializeToString())
        return reply_type.FromString(body)

    async def _connect(self) -> ClientConnection:
        if self._closed:
            raise ConnectionError("the broker channel is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._connection
            if current is not None and current.usable:
                return current
            if current is not None:
                current.retire()
            loop = asyncio.get_running_loop()
            hostname = AUTHORITY if self._tls is not None else None
            if self._network == "unix":
                _, protocol = await loop.create_unix_connection(
                    ClientConnection, self._address, ssl=self._tls, server_hostname=hostname
                )
            else:
                host, _, port = self._address.rpartition(":")
                _, protocol = await loop.create_connection(
                    ClientConnection, host, int(port), ssl=self._tls, server_hostname=hostname
                )
            try:
                await asyncio.wait_for(asyncio.shield(protocol.settled), SETTINGS_WAIT_SECONDS)
            except TimeoutError:
                protocol.close()
                raise ConnectionError(
                    f"the host's server at {self._address} sent no HTTP/2 SETTINGS within "
                    f"{SETTINGS_WAIT_SECONDS:g} s"
                ) from None
            if self._closed:
                protocol.close()
                raise ConnectionError("the broker channel is closed")
            self._connection = protocol
            return protocol

    def close(self) -> None:
        """End the connection; calls in flight fail with ``ConnectionError``."""
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
