"""The fast span encoder writes what the OTLP library writes, and the exporter sends it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from skyflow_devtools.otlp import OTLPSink, otlp_sink
from skyflow_vault_plugin.skyflow.telemetry.labels import MEMO_MAX_BYTES
from skyflow_vault_plugin.skyflow.telemetry.otlp_spans import (
    EncodedSpan,
    FastOTLPSpanExporter,
    _AttributeMemo,
    _varint,
    encode_root_span,
    encode_span,
    encode_spans_request,
    span_template,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _record(build: object, n: int = 3) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "skyflow-vault-plugin", "n": n}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider)  # type: ignore[operator]
    return list(memory.get_finished_spans())


def _many_shapes(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("skyflow_vault_plugin", "1.2.3")
    other = provider.get_tracer("other-scope")
    attributes: dict[str, Any] = {
        "skyflow.mount": "skyflow/insurance",
        "skyflow.role": "prodücer",  # not ASCII
        "skyflow.upstream.attempts": 2,
        "negative": -5,
        "big": 2**62,
        "ok": True,
        "no": False,
        "ratio": 0.25,
        "skyflow.ctx.keys": ("region", "user_id"),
        "ints": (1, 2, 3),
        "long": "x" * 1000,
    }
    with tracer.start_as_current_span("Token.Generate", kind=SpanKind.SERVER) as parent:
        parent.set_attributes(attributes)
        with tracer.start_as_current_span("SDK.Auth", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "rate_limited"))
    remote = TraceContextTextMapPropagator().extract(
        {"traceparent": TRACEPARENT, "tracestate": "vendor=a,other=b"}
    )
    span = tracer.start_span("Config.Write", context=remote, kind=SpanKind.SERVER)
    span.set_status(Status(StatusCode.OK))
    span.end()
    for kind in SpanKind:
        other.start_span(f"kind-{kind.name}", kind=kind).end()
    tracer.start_span("Role.Read", attributes={"skyflow.mount": "skyflow/insurance"}).end()


def test_bytes_parse_to_the_library_encoding() -> None:
    spans = _record(_many_shapes)
    assert len(spans) == 9
    ours = ExportTraceServiceRequest.FromString(encode_spans_request(spans))
    assert ours == encode_spans(spans)
    # and the same bytes, field for field
    assert encode_spans_request(spans) == encode_spans(spans).SerializeToString()


def test_a_second_batch_from_the_memo_is_still_exact() -> None:
    spans = _record(_many_shapes)
    encode_spans_request(spans)
    assert encode_spans_request(spans) == encode_spans(spans).SerializeToString()


def test_an_empty_batch() -> None:
    assert encode_spans_request([]) == encode_spans([]).SerializeToString()


def _with_event(provider: TracerProvider) -> None:
    span = provider.get_tracer("t").start_span("failing")
    span.record_exception(ValueError("boom"))
    span.end()


def _shapes_and_an_event(provider: TracerProvider) -> None:
    _many_shapes(provider)
    provider.get_tracer("t").start_span("between").end()
    _with_event(provider)
    _many_shapes(provider)


def test_a_span_with_events_is_encoded_by_the_library_among_the_others() -> None:
    spans = _record(_shapes_and_an_event)
    assert [len(span.events) for span in spans].count(1) == 1
    assert encode_spans_request(spans) == encode_spans(spans).SerializeToString()


def test_a_value_otlp_cannot_carry_is_left_to_the_library() -> None:
    # The library logs it and leaves that attribute out; so do we, through it.
    spans = _record(lambda p: p.get_tracer("t").start_span("x").end())
    spans[0]._attributes = {"odd": object(), "kept": 1}  # type: ignore[dict-item]  # what a buggy instrumentation could set
    assert encode_spans_request(spans) == encode_spans(spans).SerializeToString()
    sent = ExportTraceServiceRequest.FromString(encode_spans_request(spans))
    assert [kv.key for kv in sent.resource_spans[0].scope_spans[0].spans[0].attributes] == ["kept"]


def _encoded_twin(span: ReadableSpan) -> EncodedSpan:
    """``span`` as the plugin makes a cache hit's span: encoded as it finishes."""
    assert span.context is not None
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.instrumentation_scope is not None
    payload = encode_span(
        span.context,
        span.parent,
        span.name,
        span.kind.value,
        span.start_time,
        span.end_time,
        span.attributes,
        span.status,
    )
    return EncodedSpan(payload, span.resource, span.instrumentation_scope)


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**63 - 1, -1, -(2**63)]
)
def test_varints_are_protobufs(value: int) -> None:
    # AnyValue.int_value is field 3, a varint: its message is the tag (0x18), then the value.
    assert b"\x18" + _varint(value) == AnyValue(int_value=value).SerializeToString()


def test_an_attribute_set_too_long_to_keep_is_encoded_but_not_remembered() -> None:
    memo = _AttributeMemo(9)
    long = {"skyflow.role": "r" * MEMO_MAX_BYTES}
    assert memo.encode(long) == memo.encode(dict(long))
    short = {"skyflow.role": "producer"}
    memo.encode(short)
    assert [dict(key[0]) for key in memo._sets.entries] == [short]


def test_a_root_span_from_its_template_is_what_encode_span_writes() -> None:
    roots = [
        span
        for span in _record(_many_shapes) + _record(_typed_twins)
        if span.parent is None and not span.events and not span.dropped_attributes
    ]
    assert len(roots) >= 8
    assert {span.status.status_code for span in roots} == {StatusCode.UNSET}
    for span in roots:
        assert span.context is not None
        assert span.start_time is not None
        assert span.end_time is not None
        template = span_template(span.name, span.kind.value, span.attributes, span.status)
        ids = (span.context.trace_id, span.context.span_id)
        root = encode_root_span(template, *ids, span.start_time, span.end_time)
        assert root == _encoded_twin(span).payload
    context = SpanContext(2**127 + 5, 2**63 + 7, is_remote=False)
    for status in (Status(StatusCode.ERROR, "rate_limited"), Status(StatusCode.OK)):
        template = span_template("x", SpanKind.SERVER.value, {"a": "b"}, status)
        root = encode_root_span(template, context.trace_id, context.span_id, 10, 20)
        kind = SpanKind.SERVER.value
        assert root == encode_span(context, None, "x", kind, 10, 20, {"a": "b"}, status)


def test_encoded_spans_of_two_providers_interleaved_keep_their_groups() -> None:
    # The batch encoder takes a span straight into the group of the span before it while
    # resource and scope are the same objects; any change looks the group up again.
    first, second = _record(_many_shapes), _record(_many_shapes, n=4)
    interleaved = [span for pair in zip(first, second, strict=True) for span in pair]
    twins = [_encoded_twin(span) for span in interleaved]
    assert encode_spans_request(twins) == encode_spans(interleaved).SerializeToString()
    assert encode_spans_request(interleaved) == encode_spans(interleaved).SerializeToString()


def test_spans_encoded_as_they_finish_are_exported_as_the_library_would() -> None:
    spans = _record(_shapes_and_an_event)
    mixed = [
        _encoded_twin(span) if i % 2 and not span.events else span for i, span in enumerate(spans)
    ]
    assert encode_spans_request(mixed) == encode_spans(spans).SerializeToString()


def test_spans_encoded_as_they_finish_go_through_the_sdks_batch_processor(
    receiver: OTLPSink,
) -> None:
    # The SDK's processor reads only the context of what it is handed (sampled or not) and
    # queues it for the exporter: an upgrade that reads more fails here.
    spans = _record(_many_shapes)
    exporter = FastOTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=5)
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    try:
        for span in spans:
            processor.on_end(_encoded_twin(span))  # type: ignore[arg-type]
        unsampled = _encoded_twin(spans[0])
        unsampled.context = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(0))
        processor.on_end(unsampled)  # type: ignore[arg-type]
        assert processor.force_flush(5_000)
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]
    assert [
        (path, ExportTraceServiceRequest.FromString(body)) for path, body in receiver.payloads
    ] == [("/v1/traces", encode_spans(spans))]


@pytest.fixture
def receiver() -> Iterator[OTLPSink]:
    with otlp_sink(keep=True) as sink:
        yield sink


@pytest.mark.parametrize("build", [_many_shapes, _with_event], ids=["fast", "library"])
def test_the_exporter_posts_what_the_library_would(receiver: OTLPSink, build: object) -> None:
    spans = _record(build)
    exporter = FastOTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=5)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    assert [
        (path, ExportTraceServiceRequest.FromString(body)) for path, body in receiver.payloads
    ] == [("/v1/traces", encode_spans(spans))]


def test_the_request_size_limit_still_applies(receiver: OTLPSink) -> None:
    endpoint = f"{receiver.endpoint}/v1/traces"
    exporter = FastOTLPSpanExporter(endpoint=endpoint, timeout=5, max_request_size=64)
    try:
        assert exporter.export(_record(_many_shapes)) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    assert receiver.payloads == []


def _typed_twins(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("t")
    # Equal and equally hashed in Python (True == 1 == 1.0), but three different OTLP values;
    # and a list, which cannot be a memo key.
    for value in (True, 1, 1.0, True):
        tracer.start_span("x", attributes={"skyflow.found": value}).end()
    tracer.start_span("y", attributes={"listed": ["a", "b"]}).end()


def test_remembered_attribute_sets_keep_their_types() -> None:
    spans = _record(_typed_twins)
    assert encode_spans_request(spans) == encode_spans(spans).SerializeToString()
    values = [
        span.attributes[0].value.WhichOneof("value")
        for span in ExportTraceServiceRequest.FromString(encode_spans_request(spans))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    ]
    assert values == ["bool_value", "int_value", "double_value", "bool_value", "array_value"]
