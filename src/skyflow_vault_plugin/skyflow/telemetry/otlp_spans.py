"""Spans to OTLP protobuf bytes, fast: the exporter's encoding without its Python layers.

With every request traced, encoding spans was a quarter of the plugin's CPU (issue 12):
the OTLP library builds one protobuf object per span, per attribute and per value through
several Python calls each, and hashes the span's ``Resource`` (a JSON dump of its
attributes) once per span to group them. Our spans are small and alike, so
:func:`encode_spans_request` writes the wire format directly: the resource and scope are
encoded once per batch, and each set of attributes and each ``key=value`` attribute once per
process (they repeat: mount, role, outcome, cache) in bounded memos.

A span can also be encoded as it finishes (:func:`encode_span`, :class:`EncodedSpan`): the
request's span of a cache hit is never a live SDK span, and its bytes wait in the batch
processor's queue instead of a ``ReadableSpan`` that the exporter's thread would read and
encode later. A root span's bytes can be made from a template of the spans alike
(:func:`span_template`, :func:`encode_root_span`): only its ids and times are new.

The bytes parse to the same ``ExportTraceServiceRequest`` as the library's
``encode_spans(spans)`` (tests/skyflow/test_otlp_spans.py compares them field by field).
A span this encoder does not handle (events, links) is encoded on its own by the library's
encoder and its bytes put in their place.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, Status, TraceFlags

from .labels import Memo

__all__ = [
    "SAMPLED",
    "EncodedSpan",
    "FastOTLPSpanExporter",
    "SpanTemplate",
    "Unsupported",
    "encode_root_span",
    "encode_span",
    "encode_spans_request",
    "span_template",
]

_log = logging.getLogger(__name__)

# Wire types and the field numbers of opentelemetry/proto/trace/v1/trace.proto,
# common/v1/common.proto and resource/v1/resource.proto (OTLP 1.x).
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
_MEMO_LIMIT = 4096
_MEMO_VALUE_CHARS = 256  # long values (request ids, say) rarely repeat: not remembered
_SET_MEMO_LIMIT = 1024


class Unsupported(Exception):
    """A span this encoder does not handle; the library's encoder does."""


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if 0 < value < 0x4000:  # a span's length, mostly
        return bytes((value & 0x7F | 0x80, value >> 7))
    value &= 0xFFFFFFFFFFFFFFFF  # int64 as protobuf writes it: two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _delimited(field: int, payload: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def _fixed64(field: int, value: int) -> bytes:
    return _key(field, _FIXED64) + struct.pack("<Q", value)


def _any_value(value: object) -> bytes:
    """An ``AnyValue`` message (its payload, without tag)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _key(2, _VARINT) + _varint(int(value))
    if isinstance(value, str):
        return _delimited(1, value.encode("utf-8"))
    if isinstance(value, int):
        return _key(3, _VARINT) + _varint(value)
    if isinstance(value, float):
        return _key(4, _FIXED64) + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _delimited(7, value)
    if isinstance(value, Sequence):
        return _delimited(5, b"".join(_delimited(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        pairs = (_delimited(1, _key_value(str(k), v)) for k, v in value.items())
        return _delimited(6, b"".join(pairs))
    raise Unsupported(f"no OTLP value for {type(value).__name__}")


def _key_value(key: str, value: object) -> bytes:
    """A ``KeyValue`` message (its payload)."""
    return _delimited(1, key.encode("utf-8")) + _delimited(2, _any_value(value))


class _AttributeMemo:
    """Encoded ``KeyValue`` fields (tag included) by ``(key, type, value)``, bounded."""

    def __init__(self, field: int) -> None:
        self._field = field
        self._memo: dict[tuple[str, type, object], bytes] = {}
        # Whole attribute sets, which repeat even more (a cache hit's span has the same
        # attributes as the previous one's): one lookup instead of one per attribute.
        self._sets = Memo[tuple[tuple[Any, ...], tuple[type, ...]], bytes](_SET_MEMO_LIMIT)

    def encode(self, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        # The types are part of the key: True == 1 == 1.0, but they encode differently.
        key = (tuple(attributes.items()), tuple(map(type, attributes.values())))
        try:
            encoded = self._sets.entries.get(key)
        except TypeError:  # an unhashable value (a list): attribute by attribute
            return self._encode(attributes)
        if encoded is None:
            encoded = self._encode(attributes)
            self._sets.keep(key, encoded, len(encoded))
        return encoded

    def _encode(self, attributes: Mapping[str, Any]) -> bytes:
        memo, parts = self._memo, []
        for key, value in attributes.items():
            kind = type(value)
            hashable = kind in (str, int, bool, float) or (
                kind is tuple and all(type(item) is str for item in value)
            )
            memo_key = (key, kind, value) if hashable else None
            encoded = memo.get(memo_key) if memo_key is not None else None
            if encoded is None:
                encoded = _delimited(self._field, _key_value(key, value))
                if memo_key is not None and len(str(value)) <= _MEMO_VALUE_CHARS:
                    if len(memo) >= _MEMO_LIMIT:
                        memo.clear()
                    memo[memo_key] = encoded
            parts.append(encoded)
        return b"".join(parts)


_SPAN_ATTRIBUTES = _AttributeMemo(9)


def _resource(resource: Resource) -> bytes:
    return _AttributeMemo(1).encode(resource.attributes)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    out = b""
    if scope.name:
        out += _delimited(1, scope.name.encode("utf-8"))
    if scope.version:
        out += _delimited(2, scope.version.encode("utf-8"))
    return out + _AttributeMemo(3).encode(scope.attributes)


# Span fields whose bytes are the same for every span, or for every span alike in them.
_TRACE_ID = _key(1, _BYTES) + _varint(16)
_SPAN_ID = _key(2, _BYTES) + _varint(8)
_PARENT_SPAN_ID = _key(4, _BYTES) + _varint(8)
_TIMES = struct.Struct("<BQBQ")  # start (field 7) and end (field 8), both fixed64
_START, _END = 7 << 3 | _FIXED64, 8 << 3 | _FIXED64
_FLAGS = {
    remote: _key(16, _FIXED32)
    + struct.pack("<I", _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if remote else 0))
    for remote in (False, True)
}
_names: dict[tuple[str, int], bytes] = {}
_statuses: dict[tuple[int, str | None], bytes] = {}


def _name_and_kind(name: str, kind: int) -> bytes:
    encoded = _names.get((name, kind))
    if encoded is None:
        # SpanKind.INTERNAL (0) is SPAN_KIND_INTERNAL (1), and so on.
        encoded = _delimited(5, name.encode("utf-8")) + _key(6, _VARINT) + _varint(kind + 1)
        if len(_names) < _MEMO_LIMIT:
            _names[(name, kind)] = encoded
    return encoded


def _status(code: int, description: str | None) -> bytes:
    encoded = _statuses.get((code, description))
    if encoded is None:
        fields = b""
        if description:
            fields += _delimited(2, description.encode("utf-8"))
        if code:
            fields += _key(3, _VARINT) + _varint(code)
        encoded = _delimited(15, fields)
        if len(_statuses) < _MEMO_LIMIT:
            _statuses[(code, description)] = encoded
    return encoded


SAMPLED = SpanContext(0, 0, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
"""The ``context`` of an :class:`EncodedSpan`: sampled, which is all a batch processor reads.
The span's own ids are in its payload."""


class EncodedSpan:
    """A finished span already encoded (the payload of its ``Span`` message).

    It goes through the SDK's ``BatchSpanProcessor`` like a ``ReadableSpan``: the processor
    reads only ``context`` (whether it is sampled) and queues it for the exporter, which
    must be a :class:`FastOTLPSpanExporter`. Other processors and exporters would read more
    of it, so only the plugin's own pipeline is handed one
    (tests/skyflow/test_otlp_spans.py runs it through the SDK's processor).
    """

    __slots__ = ("context", "instrumentation_scope", "payload", "resource")

    def __init__(
        self,
        payload: bytes,
        resource: Resource,
        instrumentation_scope: InstrumentationScope,
        context: SpanContext = SAMPLED,
    ) -> None:
        self.payload = payload
        self.resource = resource
        self.instrumentation_scope = instrumentation_scope
        self.context = context


SpanTemplate = tuple[bytes, bytes]
"""What the root spans of one name, kind, set of attributes and status have in common: the
bytes before their times, and after (:func:`span_template`)."""


def span_template(
    name: str, kind: int, attributes: Mapping[str, Any] | None, status: Status
) -> SpanTemplate:
    """The template of root spans (no parent, no trace state, nothing dropped) like these,
    for :func:`encode_root_span`. ``kind`` is the ``SpanKind``'s value.

    Raises:
        Unsupported: an attribute value OTLP cannot carry.
    """
    tail = _SPAN_ATTRIBUTES.encode(attributes)
    tail += _status(status.status_code.value, status.description) + _FLAGS[False]
    return _name_and_kind(name, kind), tail


def encode_root_span(
    template: SpanTemplate, trace_id: int, span_id: int, start: int, end: int
) -> bytes:
    """The payload of a root span from its template: what :func:`encode_span` writes for it
    (the tests compare the two), in one join."""
    head, tail = template
    return b"".join(
        (
            _TRACE_ID,
            trace_id.to_bytes(16, "big"),
            _SPAN_ID,
            span_id.to_bytes(8, "big"),
            head,
            _TIMES.pack(_START, start, _END, end),
            tail,
        )
    )


def encode_span(
    context: SpanContext,
    parent: SpanContext | None,
    name: str,
    kind: int,
    start: int,
    end: int,
    attributes: Mapping[str, Any] | None,
    status: Status,
    dropped_attributes: int = 0,
) -> bytes:
    """The payload of the ``Span`` message of a span without events or links.

    ``kind`` is the ``SpanKind``'s value.

    Raises:
        Unsupported: an attribute value OTLP cannot carry.
    """
    parts = [_TRACE_ID, context.trace_id.to_bytes(16, "big"), _SPAN_ID]
    parts.append(context.span_id.to_bytes(8, "big"))
    if context.trace_state:
        state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
        parts.append(_delimited(3, state.encode("utf-8")))
    if parent:
        parts.append(_PARENT_SPAN_ID)
        parts.append(parent.span_id.to_bytes(8, "big"))
    parts.append(_name_and_kind(name, kind))
    parts.append(_TIMES.pack(_START, start, _END, end))
    parts.append(_SPAN_ATTRIBUTES.encode(attributes))
    if dropped_attributes:
        parts.append(_key(10, _VARINT) + _varint(dropped_attributes))
    parts.append(_status(status.status_code.value, status.description))
    parts.append(_FLAGS[parent is not None and parent.is_remote])
    return b"".join(parts)


def _span(span: ReadableSpan) -> bytes:
    if span.events or span.links:
        raise Unsupported("events or links")
    context = span.context
    start, end = span.start_time, span.end_time
    if context is None or start is None or end is None:
        raise Unsupported("a span without context or times")
    return encode_span(
        context,
        span.parent,
        span.name,
        span.kind.value,
        start,
        end,
        span.attributes,
        span.status,
        span.dropped_attributes,
    )


def _library_span(span: ReadableSpan) -> bytes:
    """The span's ``Span`` message as the library encodes it (events, links, anything)."""
    request = encode_spans([span])
    return bytes(request.resource_spans[0].scope_spans[0].spans[0].SerializeToString())


_ScopeGroup = tuple[InstrumentationScope | None, list[bytes]]
_SPAN_FIELD = _key(2, _BYTES)  # ScopeSpans.spans
_NOTHING = object()


def encode_spans_request(spans: Sequence[ReadableSpan | EncodedSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans``.

    Spans are grouped by resource and then by instrumentation scope, in the order they first
    appear, as the library does (resources by identity here: hashing a ``Resource`` dumps its
    attributes as JSON, and one tracer provider has one resource). A span with events or
    links, or an attribute value OTLP cannot carry, is encoded by the library's encoder, on
    its own (which logs and leaves out such a value).
    """
    groups: dict[int, tuple[Resource, dict[object, _ScopeGroup]]] = {}
    # A batch is mostly one run of spans from one tracer: while the resource and scope are
    # the very objects of the span before, the span joins that span's group at once.
    last_resource: object = _NOTHING
    last_scope: object = _NOTHING
    encoded: list[bytes] = []
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        if resource is not last_resource or scope is not last_scope:
            scopes = groups.setdefault(id(resource), (resource, {}))[1]
            # hashed by name, version and schema: cheap
            encoded = scopes.setdefault(scope, (scope, []))[1]
            last_resource, last_scope = resource, scope
        if isinstance(span, EncodedSpan):
            message = span.payload
        else:
            try:
                message = _span(span)
            except Unsupported:
                message = _library_span(span)
        # Tag, length and message as three parts of the one join below: no copy per span.
        encoded += (_SPAN_FIELD, _varint(len(message)), message)
    out = []
    for resource, scopes in groups.values():
        body = _delimited(1, _resource(resource))
        for scope, parts in scopes.values():
            scope_body = _delimited(1, _scope(scope)) + b"".join(parts)
            if scope is not None and scope.schema_url:
                scope_body += _delimited(3, scope.schema_url.encode("utf-8"))
            body += _delimited(2, scope_body)
        if resource.schema_url:
            body += _delimited(3, resource.schema_url.encode("utf-8"))
        out.append(_delimited(1, body))
    return b"".join(out)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` with :func:`encode_spans_request` as its encoder.

    Transport, retries, headers, compression, timeouts and the request size limit are the
    library's; only the encoding differs. It also exports :class:`EncodedSpan` items.

    ``export`` follows the library's own (opentelemetry-exporter-otlp-proto-http 1.45, as
    the lock pins it) and uses its ``_client``, ``_metrics``, ``_max_request_size`` and
    ``_shutdown``; tests/skyflow/test_otlp_spans.py posts through it to a local receiver, so
    an upgrade that moves them fails there.
    """

    def export(self, spans: Sequence[ReadableSpan | EncodedSpan]) -> SpanExportResult:
        if self._shutdown:
            return super().export([])  # the library's warning and result
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans_request(spans)
            except Exception as error:
                _log.error("failed to encode a span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if len(data) > self._max_request_size > 0:
                _log.warning(
                    "dropping a span batch of %d bytes: above the exporter's limit of %d",
                    len(data),
                    self._max_request_size,
                )
                return SpanExportResult.FAILURE
            outcome = self._client.export(data)
            if not outcome.success:
                result.error = outcome.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
