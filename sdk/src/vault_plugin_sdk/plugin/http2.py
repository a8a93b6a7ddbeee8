"""HTTP/2 framing shared by the plugin's gRPC server (``transport``) and its broker client.

Both ends speak to grpc-go over one connection and need the same few things: frames cut
out of the received bytes with slicing, header blocks assembled from CONTINUATIONs and
decoded once per distinct block, SETTINGS and PING answered, the receive windows kept
open in bulk, and everything produced in one event-loop turn sent in one write (one TLS
record where it fits). :class:`FramedConnection` does those; the server and the client
add only what their side of a call needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar, cast

from hpack import Decoder

log = logging.getLogger("sdk.plugin")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 2, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 4, 5
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, COMPRESSION_ERROR = 0, 1, 3, 8, 9

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
# What we let the peer send before it must wait for a WINDOW_UPDATE, per stream and for the
# connection; replenished once half is used.
RECEIVE_WINDOW = 1 << 24
HEADER_CACHE_SIZE = 64  # distinct received header blocks remembered per connection
MAX_MESSAGE = 64 << 20  # a gRPC message larger than this is refused


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


def grpc_message(body: bytes) -> bytes:
    """``body`` framed as one uncompressed gRPC message."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


T = TypeVar("T")


class HeaderBlocks(Generic[T]):
    """Decodes received header blocks, remembering what unchanged blocks mean.

    grpc-go sends the same few bytes for most header blocks (every field indexed in the
    HPACK tables), and decoding such a block leaves the tables as they were, so its meaning
    stays the same until some other block changes them. Those blocks are remembered by
    their bytes, as ``interpret`` made them; anything that changes the dynamic table
    forgets them all. Raises ``hpack``'s ``HPACKError`` for a block that does not decode.
    """

    def __init__(self, interpret: Callable[[list[tuple[str, str]]], T]) -> None:
        self._interpret = interpret
        self._decoder = Decoder()
        self.remembered: dict[bytes, T] = {}

    def decode(self, block: bytes) -> T:
        """What ``block`` means, from memory when its bytes were seen with these tables."""
        known = self.remembered.get(block)
        if known is not None:
            return known
        table = self._decoder.header_table.dynamic_entries
        size, head = len(table), (table[0] if table else None)
        meaning = self._interpret(cast(list[tuple[str, str]], self._decoder.decode(block)))
        if len(table) == size and (table[0] if table else None) is head:
            if len(self.remembered) >= HEADER_CACHE_SIZE:
                self.remembered.clear()
            self.remembered[block] = meaning
        else:
            self.remembered.clear()
        return meaning


class FlowControlled:
    """A stream's flow control: its share of the peer's window, what it received since it
    last gave window back, and a sender waiting for the window to open.

    Subclasses set ``id``, ``send_window``, ``unread`` and ``_window_open`` (``None``) in
    their own ``__init__``: a stream is made per call, and a chained ``__init__`` would add
    a call to every one.
    """

    __slots__ = ("_window_open", "id", "send_window", "unread")

    id: int
    send_window: int
    unread: int
    _window_open: asyncio.Event | None

    def open_window(self) -> None:
        """Wake the stream's sender, if it waits for the window to open."""
        if self._window_open is not None:
            self._window_open.set()
            self._window_open = None

    async def window_opened(self) -> None:
        """Wait until the window may have opened (or the stream or connection ended)."""
        self._window_open = asyncio.Event()
        await self._window_open.wait()


class FramedConnection(asyncio.Protocol):
    """One HTTP/2 connection's framing; subclasses handle streams.

    Subclasses implement ``_headers`` (a complete header block), ``_stream_data`` (a DATA
    payload, padding removed, for a stream), ``_reset`` (RST_STREAM), ``_going_away``
    (GOAWAY) and ``_flow_controlled`` (their open streams, whose send windows follow the
    peer's WINDOW_UPDATEs and SETTINGS).
    """

    expects_preface = False  # a server reads the client's preface before any frame

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = not self.expects_preface
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_end_stream = False
        self._out: list[bytes] = []
        self._acks: list[bytes] = []  # PING acks: they leave after the frames of their write
        self._flush_scheduled = False
        self._receiving = False
        self._unread = 0  # connection-level bytes received since the last WINDOW_UPDATE
        self.closed = False
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.peer_max_streams: int | None = None

    # -- output ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes; everything queued in one event-loop turn leaves in one write."""
        self._out.append(data)
        if not self._flush_scheduled and not self._receiving:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._acks:
            self._out += self._acks
            self._acks.clear()
        if self._out and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def open_windows(self) -> bytes:
        """Our SETTINGS and the connection's WINDOW_UPDATE: the first frames we send."""
        settings = SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + RECEIVE_WINDOW.to_bytes(
            4, "big"
        )
        return frame(SETTINGS, 0, 0, settings) + frame(
            WINDOW_UPDATE, 0, 0, (RECEIVE_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")
        )

    async def send_data(
        self, stream: FlowControlled, data: bytes, *, end_stream: bool, stop: Callable[[], bool]
    ) -> bool:
        """DATA frames for ``data`` within the peer's windows, the last one ending the stream
        if ``end_stream``; waits for WINDOW_UPDATEs as needed. Returns False, with data left
        unsent, once ``stop()`` holds (checked before each frame and after each wait)."""
        view = memoryview(data)
        while view:
            if stop():
                return False
            allowed = min(len(view), self.send_window, stream.send_window, self.peer_max_frame)
            if allowed <= 0:
                await stream.window_opened()
                continue
            self.send_window -= allowed
            stream.send_window -= allowed
            flags = END_STREAM if end_stream and allowed == len(view) else 0
            self.send(frame(DATA, flags, stream.id, bytes(view[:allowed])))
            view = view[allowed:]
        return True

    def consumed(self, stream_id: int, unread: int, end: bool) -> int:
        """Give a stream's receive window back once half is used; the bytes still owed."""
        if unread >= RECEIVE_WINDOW // 2 and not end:
            self.send(frame(WINDOW_UPDATE, 0, stream_id, unread.to_bytes(4, "big")))
            return 0
        return unread

    # -- input -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # What answers these frames is written once the calls they start have taken their
        # first step, in the same loop turn: a call that completes at once (a warm read)
        # shares that write, without a turn of its own. The host's gRPC sends a
        # bandwidth-probing PING with the data it receives; acknowledged after our replies,
        # the probe covers them, instead of the next reply starting a probe that travels
        # alone and costs both processes a wakeup.
        self._receiving = True
        try:
            self._receive(data)
        finally:
            self._receiving = False
            if not self._flush_scheduled:
                self._schedule_flush()

    def _receive(self, data: bytes) -> None:
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

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "expected CONTINUATION")
            return
        if kind == DATA:
            # Flow control counts the whole payload, padding included, even for a stream
            # that is gone: the connection window must be given back either way.
            self._unread += len(payload)
            if self._unread >= RECEIVE_WINDOW // 2:
                self.send(frame(WINDOW_UPDATE, 0, 0, self._unread.to_bytes(4, "big")))
                self._unread = 0
            received = len(payload)
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            self._stream_data(stream_id, payload, received, bool(flags & END_STREAM))
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
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.send_window += increment
                self._stream_window(None, increment)
            else:
                self._stream_window(stream_id, increment)
        elif kind == PING:
            if not flags & ACK:
                self._acks.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._reset(stream_id, int.from_bytes(payload[:4], "big"))
        elif kind == GOAWAY:
            self._going_away(
                int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                int.from_bytes(payload[4:8], "big"),
            )
        # PRIORITY and unknown frame types are ignored, as RFC 9113 allows.

    def _settings(self, payload: bytes) -> None:
        for index in range(0, len(payload) - 5, 6):
            key = int.from_bytes(payload[index : index + 2], "big")
            value = int.from_bytes(payload[index + 2 : index + 6], "big")
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                self._initial_window_changed(delta)
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self.peer_max_frame = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            # HEADER_TABLE_SIZE limits the peer's decoder; we never index, so it is moot.
        self.send(frame(SETTINGS, ACK, 0))

    # -- for subclasses ----------------------------------------------------------------------

    def _headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def _stream_data(self, stream_id: int, payload: bytes, received: int, end: bool) -> None:
        """``payload`` (padding removed) of a DATA frame of ``received`` bytes in all."""
        raise NotImplementedError

    def _reset(self, stream_id: int, code: int) -> None:
        raise NotImplementedError

    def _going_away(self, last_stream_id: int, code: int) -> None:
        log.debug("peer sent GOAWAY", extra={"last_stream_id": last_stream_id, "code": code})

    def _flow_controlled(self) -> Mapping[int, FlowControlled]:
        raise NotImplementedError

    def _stream_window(self, stream_id: int | None, increment: int) -> None:
        """A WINDOW_UPDATE for a stream, or for the connection (``None``)."""
        streams = self._flow_controlled()
        if stream_id is None:
            for waiting in streams.values():
                waiting.open_window()
            return
        stream = streams.get(stream_id)
        if stream is not None:
            stream.send_window += increment
            stream.open_window()

    def _initial_window_changed(self, delta: int) -> None:
        for stream in self._flow_controlled().values():
            stream.send_window += delta
            stream.open_window()

    # -- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued, then close the connection."""
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _fail(self, code: int, why: str) -> None:
        log.warning("closing the connection: %s", why)
        self.goaway(code)
        self.close()
        self.closed = True

    def goaway(self, code: int = NO_ERROR) -> None:
        """Tell the peer no new streams of its own will be served on this connection."""
        self.send(
            frame(
                GOAWAY, 0, 0, self._last_peer_stream().to_bytes(4, "big") + code.to_bytes(4, "big")
            )
        )

    def _last_peer_stream(self) -> int:
        return 0
