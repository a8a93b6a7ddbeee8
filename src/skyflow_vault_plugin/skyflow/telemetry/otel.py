"""Telemetry switched on: OpenTelemetry traces and metrics exported over OTLP/HTTP.

This module imports the OpenTelemetry SDK, so it is imported only when a signal is on. The
providers are this plugin's own (never the global ones): spans go through a
``BatchSpanProcessor`` and metrics through a ``PeriodicExportingMetricReader``, whose
threads export in the background, so a request only appends to a queue or an aggregate.
The sampler is parent-based: a sampled (or unsampled) incoming ``traceparent`` decides, and
``TELEMETRY_SAMPLE_RATE`` applies to traces that start here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from vault_plugin_sdk.framework import Request

from ... import __version__
from .classify import classify_error
from .disabled import Telemetry
from .histogram import MergingPeriodicExportingMetricReader, histogram_for
from .labels import ApplicationLabels, Memo, ctx_shape, request_id_label
from .names import (
    ATTR_APPLICATION,
    ATTR_CACHE,
    ATTR_CTX_KEYS,
    ATTR_CTX_TYPE,
    ATTR_ERROR_TYPE,
    ATTR_FOUND,
    ATTR_MOUNT,
    ATTR_MOUNT_PATH,
    ATTR_OPERATION,
    ATTR_OUTCOME,
    ATTR_ROLE,
    ATTR_UPSTREAM_ATTEMPTS,
    ATTR_UPSTREAM_REQUEST_ID,
    ATTR_UPSTREAM_STATUS,
    ERROR,
    METRIC_CACHE_LOOKUPS,
    METRIC_CONFIG_OPERATIONS,
    METRIC_HEALTH_CHECKS,
    METRIC_ROLE_OPERATIONS,
    METRIC_TOKEN_DURATION,
    METRIC_TOKENS_FAILED,
    METRIC_TOKENS_ISSUED,
    METRIC_UPSTREAM_CALLS,
    METRIC_UPSTREAM_DURATION,
    SPAN_SDK_AUTH,
    SUCCESS,
    UNKNOWN_ROLE,
    Op,
)
from .otlp_spans import (
    EncodedSpan,
    SpanTemplate,
    Unsupported,
    encode_root_span,
    encode_span,
    span_template,
)
from .scope import CURRENT_SCOPE, OpScope
from .settings import TelemetrySettings

if TYPE_CHECKING:
    from ..client import AttemptHook

__all__ = ["INSTRUMENTATION_NAME", "LATENCY_BUCKETS_MS", "OTelTelemetry"]

INSTRUMENTATION_NAME = "skyflow_vault_plugin"
SERVICE_NAME = "skyflow-vault-plugin"
LATENCY_BUCKETS_MS = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
)  # fmt: skip
"""Histogram buckets: the Go plugin's (1 ms to 10 s), plus sub-millisecond ones for cache
hits and 30 s for the exchange deadline."""

_UNSET = Status(StatusCode.UNSET)
_CACHE_LOOKUP = {"hit": "hit", "miss": "miss", "coalesced": "coalesced", "stale": "miss"}
_SHUTDOWN_JOIN = 2.0
_TEMPLATE_LIMIT = 1024  # span templates kept (one per set of attribute values seen)

_log = logging.getLogger(__name__)


def _resource(settings: TelemetrySettings) -> Resource:
    attributes: dict[str, str] = {"service.name": SERVICE_NAME, "service.version": __version__}
    if settings.environment:
        attributes["deployment.environment.name"] = settings.environment
        attributes["deployment.environment"] = settings.environment
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over these defaults.
    return Resource.create(attributes).merge(OTELResourceDetector().detect())


# A request span's attributes, as functions of plain values: those known when it starts, and
# those known when it ends. A cache hit's span template (OTelTelemetry._encoded_root) is kept
# by these very values, so it cannot miss one.


def _start_attributes(
    mount: str, mount_path: str, operation: str, application: str, role: str
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        ATTR_MOUNT: mount,
        ATTR_MOUNT_PATH: mount_path,
        ATTR_OPERATION: operation,
    }
    # Every attribute costs on each request and again when exported: defaults are left
    # out (no Application-Source header, no ctx).
    if application != ApplicationLabels.NONE:
        attributes[ATTR_APPLICATION] = application
    if role:
        attributes[ATTR_ROLE] = role
    return attributes


_StartFields = tuple[str, str, str, str, str]
_FinalFields = tuple[
    str, str, str, bool | None, str, tuple[str, tuple[str, ...]] | None, int, int | None, str
]


def _start_fields(scope: OpScope) -> _StartFields:
    """What the attributes known at a request's start are made of."""
    req = scope.request
    return (scope.mount, req.mount_point, req.operation, scope.application, scope.role)


def _final_fields(scope: OpScope) -> _FinalFields:
    """What the attributes known at a request's end are made of."""
    return (
        scope.op.family,
        scope.outcome,
        scope.error_type,
        scope.found,
        scope.cache,
        ctx_shape(scope.ctx) if scope.ctx is not None else None,
        scope.attempts,
        scope.upstream_status,
        scope.upstream_request_id,
    )


def _final_attributes(
    family: str,
    outcome: str,
    error_type: str,
    found: bool | None,
    cache: str,
    ctx: tuple[str, tuple[str, ...]] | None,
    attempts: int,
    upstream_status: int | None,
    upstream_request_id: str,
) -> dict[str, Any]:
    final: dict[str, Any] = {ATTR_OUTCOME: outcome}
    if error_type:
        final[ATTR_ERROR_TYPE] = error_type
    if found is not None:
        final[ATTR_FOUND] = found
    if family == "token":
        final[ATTR_CACHE] = cache or "none"
        if ctx is not None:
            kind, keys = ctx
            final[ATTR_CTX_TYPE] = kind
            if keys:
                final[ATTR_CTX_KEYS] = keys
    if attempts:
        final[ATTR_UPSTREAM_ATTEMPTS] = attempts
    if upstream_status is not None:
        final[ATTR_UPSTREAM_STATUS] = upstream_status
    if upstream_request_id:
        final[ATTR_UPSTREAM_REQUEST_ID] = upstream_request_id
    return final


def _status(outcome: str, error_type: str) -> Status | None:
    return Status(StatusCode.ERROR, error_type) if outcome == ERROR else None


class _Counter:
    """A monotonic counter kept in a dict on the request path and read by the SDK only at
    collection time (an asynchronous counter): an increment costs a dict update, not an SDK
    measurement with its attribute checks."""

    __slots__ = ("names", "values")

    def __init__(self, *names: str) -> None:
        self.names = names
        self.values: dict[tuple[str, ...], int] = {}

    def add(self, *key: str) -> None:
        values = self.values
        values[key] = values.get(key, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # Runs on the reader's thread: copy first (atomic under the GIL), then build.
        snapshot = self.values.copy()
        names = self.names
        return [
            Observation(count, {n: v for n, v in zip(names, key, strict=True) if v})
            for key, count in snapshot.items()
        ]


class _Instruments:
    """Every metric instrument, created once per process."""

    def __init__(self, provider: MeterProvider, readers: Sequence[MetricReader]) -> None:
        meter = provider.get_meter(INSTRUMENTATION_NAME, __version__)
        self.tokens_issued = _Counter("mount", "role", "cache", "application")
        self.tokens_failed = _Counter("mount", "role", "error_type", "application")
        self.cache_lookups = _Counter("mount", "role", "cache")
        self.upstream_calls = _Counter("mount", "status")
        self.config_operations = _Counter("mount", "operation", "outcome", "error_type")
        self.role_operations = _Counter("mount", "operation", "outcome", "error_type")
        self.health_checks = _Counter("mount", "outcome", "error_type")
        counters = (
            (
                METRIC_TOKENS_ISSUED,
                self.tokens_issued,
                "{token}",
                "Tokens returned by creds/<role>.",
            ),
            (
                METRIC_TOKENS_FAILED,
                self.tokens_failed,
                "{error}",
                "creds/<role> requests that failed, by error type.",
            ),
            (
                METRIC_CACHE_LOOKUPS,
                self.cache_lookups,
                "{lookup}",
                "Token cache lookups by result: hit, miss or coalesced.",
            ),
            (
                METRIC_UPSTREAM_CALLS,
                self.upstream_calls,
                "{call}",
                "HTTP calls to Skyflow's token endpoint, by status.",
            ),
            (
                METRIC_CONFIG_OPERATIONS,
                self.config_operations,
                "{operation}",
                "Operations on config.",
            ),
            (
                METRIC_ROLE_OPERATIONS,
                self.role_operations,
                "{operation}",
                "Operations on roles/ and roles/<name>.",
            ),
            (METRIC_HEALTH_CHECKS, self.health_checks, "{check}", "Reads of health."),
        )
        for name, counter, unit, description in counters:
            meter.create_observable_counter(
                name, callbacks=[counter.observe], unit=unit, description=description
            )
        # Recorded on every creds read: without the SDK's per-measurement work where the
        # readers allow it (histogram.py).
        self.token_duration = histogram_for(
            meter,
            readers,
            InstrumentationScope(INSTRUMENTATION_NAME, __version__),
            name=METRIC_TOKEN_DURATION,
            unit="ms",
            description="Time to answer creds/<role>, cache hits included.",
            boundaries=LATENCY_BUCKETS_MS,
            names=("mount", "role", "outcome", "cache"),
        )
        self.upstream_duration = meter.create_histogram(
            METRIC_UPSTREAM_DURATION,
            unit="ms",
            description="Duration of one HTTP call to Skyflow's token endpoint.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_MS,
        )


class _Exchange(AbstractContextManager["_Exchange"]):
    """One Skyflow exchange (retries included): the ``SDK.Auth`` span and its attempts."""

    __slots__ = ("attempts", "mount", "request_id", "scope", "span", "status", "telemetry", "token")

    def __init__(self, telemetry: OTelTelemetry) -> None:
        self.telemetry = telemetry
        self.scope: OpScope | None = None
        self.mount = ""
        self.span: Any = None
        self.attempts = 0
        self.status: int | None = None
        self.request_id = ""
        self.token: Any = None

    def __enter__(self) -> _Exchange:
        scope = CURRENT_SCOPE.get()
        self.scope = scope
        self.mount = scope.mount if scope is not None else ""
        tracer = self.telemetry.tracer
        if tracer is not None:
            try:
                attributes: dict[str, str] = {ATTR_MOUNT: self.mount}
                parent = None
                if scope is not None:
                    if scope.role:
                        attributes[ATTR_ROLE] = scope.role
                    # SDK.Auth is a child of the request's span, started now if need be.
                    parent = trace_api.set_span_in_context(self.telemetry.open_span(scope))
                self.span = tracer.start_span(
                    SPAN_SDK_AUTH, context=parent, kind=SpanKind.CLIENT, attributes=attributes
                )
            except Exception:
                _log.debug("telemetry failed to start a span", exc_info=True)
        self.token = _exchange.set(self)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        _exchange.reset(self.token)
        try:
            self._finish(exc)
        except Exception:
            _log.debug("telemetry failed to record an exchange", exc_info=True)

    def attempt(self, status: int | None, request_id: str, elapsed_ms: float) -> None:
        self.attempts += 1
        self.status = status
        if request_id:
            self.request_id = request_id
        span = self.span
        if span is not None and span.is_recording():
            event: dict[str, Any] = {"duration_ms": round(elapsed_ms, 3)}
            if status is not None:
                event["http.response.status_code"] = status
            if request_id:
                event[ATTR_UPSTREAM_REQUEST_ID] = request_id
            span.add_event("skyflow.attempt", event)

    def _finish(self, exc: BaseException | None) -> None:
        status, request_id = self.status, self.request_id
        upstream = getattr(exc, "status", None) if exc is not None else None
        if isinstance(upstream, int):
            status = upstream
        if self.scope is not None:
            self.scope.note_upstream(status, request_id, self.attempts)
        span = self.span
        if span is None:
            return
        if span.is_recording():
            attributes: dict[str, Any] = {
                ATTR_UPSTREAM_ATTEMPTS: self.attempts,
                ATTR_OUTCOME: SUCCESS if exc is None else ERROR,
            }
            if status is not None:
                attributes[ATTR_UPSTREAM_STATUS] = status
                attributes["http.response.status_code"] = status
            if request_id:
                attributes[ATTR_UPSTREAM_REQUEST_ID] = request_id
            if exc is not None:
                error_type = classify_error(exc)
                attributes[ATTR_ERROR_TYPE] = error_type
                span.set_status(Status(StatusCode.ERROR, error_type))
            span.set_attributes(attributes)
        span.end()


_exchange: ContextVar[_Exchange | None] = ContextVar("skyflow_telemetry_exchange", default=None)


class OTelTelemetry(Telemetry):
    """Spans and metrics through OpenTelemetry's SDK.

    ``span_processor`` and ``metric_readers`` replace the OTLP exporters (tests pass
    in-memory ones). Otherwise the OTLP/HTTP exporters get their endpoint and timeout from
    ``settings`` and read the other standard ``OTEL_*`` variables (headers, certificates,
    compression, temporality) from the process environment themselves.
    """

    enabled = True

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        span_processor: SpanProcessor | None = None,
        metric_readers: Sequence[MetricReader] | None = None,
        resource: Resource | None = None,
    ) -> None:
        super().__init__(settings)
        self._closed = False
        resource = resource or _resource(settings)
        self.tracer_provider: TracerProvider | None = None
        self.tracer: trace_api.Tracer | None = None
        self._propagator = TraceContextTextMapPropagator()
        # Cache hits' span templates, when spans are encoded here and roots always sampled.
        self._templates: Memo[tuple[object, ...], SpanTemplate] | None = None
        if settings.traces_enabled:
            self.tracer_provider = TracerProvider(
                resource=resource,
                sampler=ParentBased(TraceIdRatioBased(settings.sample_rate)),
                shutdown_on_exit=False,
            )
            self._span_processor = span_processor or BatchSpanProcessor(self._span_exporter())
            # The plugin's own pipeline (our exporter behind the SDK's batch processor) takes
            # a cache hit's span already encoded; any other processor gets ReadableSpans.
            self._encodes_spans = span_processor is None
            # The sampler above samples every span without a parent at a rate of 1.
            self._samples_every_root = settings.sample_rate >= 1.0
            self.tracer_provider.add_span_processor(self._span_processor)
            self.tracer = self.tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)
            self._scope = InstrumentationScope(INSTRUMENTATION_NAME, __version__)
            self._ids = self.tracer_provider.id_generator
            self._resource = self.tracer_provider.resource
            if self._encodes_spans and self._samples_every_root:
                self._templates = Memo(_TEMPLATE_LIMIT)
        self.meter_provider: MeterProvider | None = None
        self._metrics: _Instruments | None = None
        if settings.metrics_enabled:
            readers = list(metric_readers) if metric_readers is not None else [self._reader()]
            self.meter_provider = MeterProvider(
                metric_readers=readers, resource=resource, shutdown_on_exit=False
            )
            self._metrics = _Instruments(self.meter_provider, readers)

    def _span_exporter(self) -> Any:
        from .http_session import TRACES_CREDENTIAL_PROVIDER, exporter_session
        from .otlp_spans import FastOTLPSpanExporter

        return FastOTLPSpanExporter(
            endpoint=self.settings.traces_endpoint,
            timeout=self.settings.traces_timeout,
            session=exporter_session(TRACES_CREDENTIAL_PROVIDER),
        )

    def _reader(self) -> MetricReader:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        from .http_session import METRICS_CREDENTIAL_PROVIDER, exporter_session

        exporter = OTLPMetricExporter(
            endpoint=self.settings.metrics_endpoint,
            timeout=self.settings.metrics_timeout,
            session=exporter_session(METRICS_CREDENTIAL_PROVIDER),
        )
        return MergingPeriodicExportingMetricReader(
            exporter, export_interval_millis=self.settings.metrics_export_interval * 1000.0
        )

    # -- what the engine calls -----------------------------------------------------------

    @property
    def on_attempt(self) -> AttemptHook | None:
        return self._on_attempt

    def upstream_exchange(self) -> AbstractContextManager[object]:
        return _Exchange(self)

    def _observes(self, op: Op) -> bool:
        return True

    def _on_attempt(self, status: int | None, request_id: str | None, elapsed: float) -> None:
        exchange = _exchange.get()
        elapsed_ms = elapsed * 1000.0
        clean_id = request_id_label(request_id)
        if exchange is not None:
            exchange.attempt(status, clean_id, elapsed_ms)
        metrics = self._metrics
        if metrics is not None:
            mount = exchange.mount if exchange is not None else ""
            label = str(status) if status is not None else "no_response"
            metrics.upstream_calls.add(mount, label)
            metrics.upstream_duration.record(elapsed_ms, {"mount": mount, "status": label})

    # -- one request -----------------------------------------------------------------------
    #
    # A request's span is created when it ends, with every attribute at once and its real
    # start time; or earlier, when an exchange needs it as a parent (a cache miss). A cache
    # hit thus costs one span creation (with the plugin's own pipeline and no parent, only
    # its bytes: _encoded_root), and no context is attached to the event loop's task.

    def _begin(self, op: Op, req: Request) -> OpScope:
        scope = super()._begin(op, req)
        scope.start_ns = time.time_ns()
        return scope

    def _parent(self, req: Request) -> Context | None:
        values = req.headers.get("traceparent")
        if not values:
            return None
        carrier = {"traceparent": values[0]}
        state = req.headers.get("tracestate")
        if state:
            carrier["tracestate"] = ",".join(state)
        return self._propagator.extract(carrier)

    def _start_attributes(self, scope: OpScope) -> dict[str, Any]:
        return _start_attributes(*_start_fields(scope))

    def open_span(self, scope: OpScope, final: dict[str, Any] | None = None) -> Any:
        """The request's span, started (at the request's start time) if it is not yet."""
        span = scope.span
        if span is None:
            assert self.tracer is not None
            attributes = self._start_attributes(scope)
            if final:
                attributes.update(final)
            span = self.tracer.start_span(
                scope.op.span_name,
                context=self._parent(scope.request),
                kind=SpanKind.SERVER,
                attributes=attributes,
                start_time=scope.start_ns,
            )
            scope.span = span
        elif final:
            span.set_attributes(final)
        return span

    def _record(self, scope: OpScope) -> None:
        # Each output on its own: a failing one must not cost the others.
        if self.tracer is not None:
            try:
                self._end_span(scope)
            except Exception:
                _log.debug("telemetry failed to end a span", exc_info=True)
        if self._metrics is not None:
            try:
                self._count(self._metrics, scope)
            except Exception:
                _log.debug("telemetry failed to record metrics", exc_info=True)
        super()._record(scope)

    def _trace_id(self, scope: OpScope) -> str:
        if scope.trace_id:
            return f"{scope.trace_id:032x}"
        if scope.span is not None:
            context = scope.span.get_span_context()
            if context.is_valid:
                return f"{context.trace_id:032x}"
        return super()._trace_id(scope)

    def _end_span(self, scope: OpScope) -> None:
        if scope.span is None and self._templates is not None and self._encoded_root(scope):
            return
        final = _final_attributes(*_final_fields(scope))
        status = _status(scope.outcome, scope.error_type)
        if scope.span is None:
            attributes = self._start_attributes(scope)
            attributes.update(final)
            scope.span = self._finished_span(scope, attributes, status)
            return
        span = self.open_span(scope, final)
        if status is not None:
            span.set_status(status)
        span.end()

    def _encoded_root(self, scope: OpScope) -> bool:
        """Hand the processor the span of a request that started its trace and that nothing
        needed while it ran (a cache hit), straight as bytes; False if it is not one.

        The spans of such requests differ only in their ids and times: the rest of their
        bytes (name, kind, attributes, status) is a template kept per set of the values the
        attributes are made of, built through the same functions as any other span's. The
        decisions are the tracer's: its id generator, and its sampler's known answer (a
        root span at a sample rate of 1 is sampled with its attributes and no trace state).
        Per request that is two ids, a clock read and a join: no ``SpanContext``, attribute
        dictionary or encoder call (issue 12: with it and the exporter's batch encoding,
        telemetry's own instructions per traced read fell by half).
        """
        if scope.request.headers.get("traceparent"):
            return False  # a parent to read: the sampler decides, through _finished_span
        start_fields, final_fields = _start_fields(scope), _final_fields(scope)
        key = (scope.op.span_name, *start_fields, *final_fields)
        templates = self._templates
        assert templates is not None
        template = templates.entries.get(key)
        if template is None:
            attributes = _start_attributes(*start_fields)
            attributes.update(_final_attributes(*final_fields))
            status = _status(scope.outcome, scope.error_type) or _UNSET
            try:
                template = span_template(
                    scope.op.span_name, SpanKind.SERVER.value, attributes, status
                )
            except Unsupported:
                return False
            templates.keep(key, template, len(template[0]) + len(template[1]))
        ids = self._ids
        trace_id = ids.generate_trace_id()
        payload = encode_root_span(
            template, trace_id, ids.generate_span_id(), scope.start_ns, time.time_ns()
        )
        self._span_processor.on_end(EncodedSpan(payload, self._resource, self._scope))  # type: ignore[arg-type]
        scope.trace_id = trace_id
        return True

    def _finished_span(
        self, scope: OpScope, attributes: dict[str, Any], status: Status | None
    ) -> trace_api.Span | ReadableSpan:
        """The span of a request nothing needed as a parent while it ran (a cache hit), made
        finished, in one step, and handed to the span processor.

        ``Tracer.start_span`` and ``Span.end`` cost about five times as much (issue 12: a
        live span, its locks, bounded attribute copies and processor callbacks, for a span
        that is already over). The decisions are the tracer's own: its sampler (asked
        unless its answer is known: a root span at a sample rate of 1), its id generator
        and trace flags; the attributes are ours and already clean.
        """
        provider = self.tracer_provider
        assert provider is not None
        name, kind = scope.op.span_name, SpanKind.SERVER
        context = self._parent(scope.request)
        parent: SpanContext | None = None
        if context is not None:
            parent = trace_api.get_current_span(context).get_span_context()
            if not parent.is_valid:
                parent = None
        ids = provider.id_generator
        trace_id = parent.trace_id if parent is not None else ids.generate_trace_id()
        kept: Mapping[str, Any] | None
        if parent is None and self._samples_every_root:
            # What the sampler would answer, without asking it: TraceIdRatioBased(1.0)
            # samples every trace id and keeps the attributes, and a span without a valid
            # parent has no trace state to inherit.
            decision, kept, trace_state = Decision.RECORD_AND_SAMPLE, attributes, None
        else:
            sampling = provider.sampler.should_sample(context, trace_id, name, kind, attributes)
            decision, kept = sampling.decision, sampling.attributes
            trace_state = sampling.trace_state
        flags = TraceFlags.SAMPLED if decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        random = parent.trace_flags.random_trace_id if parent else ids.is_trace_id_random()
        if random:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=trace_state,
        )
        if decision is Decision.DROP:
            return trace_api.NonRecordingSpan(span_context)
        end_time = time.time_ns()
        payload = None
        if self._encodes_spans:
            # Its bytes now, on this thread, instead of a ReadableSpan that the exporter's
            # thread would read and encode later (issue 12): the attribute sets repeat, and
            # their encoding is remembered. A value the encoder cannot write leaves the span
            # to the library's encoder, as a ReadableSpan.
            with contextlib.suppress(Unsupported):
                payload = encode_span(
                    span_context,
                    parent,
                    name,
                    kind.value,
                    scope.start_ns,
                    end_time,
                    kept,
                    status or _UNSET,
                )
        if payload is not None:
            # BatchSpanProcessor.on_end reads only the span's context (sampled or not: with a
            # sampler that can answer RECORD_ONLY, not), then queues it for
            # FastOTLPSpanExporter (test_otlp_spans runs this through the SDK's processor).
            encoded = EncodedSpan(payload, provider.resource, self._scope, span_context)
            self._span_processor.on_end(encoded)  # type: ignore[arg-type]
            return trace_api.NonRecordingSpan(span_context)
        span = ReadableSpan(
            name,
            span_context,
            parent,
            provider.resource,
            MappingProxyType(dict(kept or {})),
            kind=kind,
            status=status or _UNSET,
            start_time=scope.start_ns,
            end_time=end_time,
            instrumentation_scope=self._scope,
        )
        self._span_processor.on_end(span)
        return span

    def _count(self, metrics: _Instruments, scope: OpScope) -> None:
        family = scope.op.family
        mount, outcome, error_type = scope.mount, scope.outcome, scope.error_type
        if family == "token":
            role = UNKNOWN_ROLE if error_type == "not_found" else scope.role
            cache = scope.cache or "none"
            if outcome == SUCCESS:
                metrics.tokens_issued.add(mount, role, cache, scope.application)
            else:
                metrics.tokens_failed.add(mount, role, error_type, scope.application)
            metrics.token_duration.record(scope.duration_ms(), (mount, role, outcome, cache))
            lookup = _CACHE_LOOKUP.get(scope.cache)
            if lookup is not None:
                metrics.cache_lookups.add(mount, role, lookup)
        elif family == "health":
            metrics.health_checks.add(mount, outcome, error_type)
        elif family == "config":
            metrics.config_operations.add(mount, scope.request.operation, outcome, error_type)
        else:
            metrics.role_operations.add(mount, scope.request.operation, outcome, error_type)

    # -- lifecycle -------------------------------------------------------------------------

    def _flush_sync(self, timeout_ms: int) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(timeout_ms)
        if self.meter_provider is not None:
            self.meter_provider.force_flush(timeout_ms)

    async def flush(self) -> None:
        """Export pending spans and metrics from a daemon thread, waiting at most
        ``settings.flush_timeout`` seconds: a slow collector can hold up neither Cleanup nor
        the process's exit (the event loop's default executor would be waited for)."""
        if self._closed:
            return
        timeout = self.settings.flush_timeout
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def work() -> None:
            try:
                self._flush_sync(int(timeout * 1000))
            except Exception:
                _log.warning("telemetry flush failed", exc_info=True)
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(finished)

        threading.Thread(target=work, name="telemetry-flush", daemon=True).start()
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            _log.warning("telemetry flush did not finish within %.1f s", timeout)

    def shutdown(self) -> None:
        """Flush and shut both providers down, waiting at most ~2 s (the host kills a
        plugin that takes longer to exit)."""
        if self._closed:
            return
        self._closed = True
        timeout_ms = self.settings.flush_timeout * 1000.0

        def stop() -> None:
            try:
                if self.tracer_provider is not None:
                    self.tracer_provider.shutdown()
                if self.meter_provider is not None:
                    self.meter_provider.shutdown(timeout_millis=timeout_ms)
            except Exception:
                _log.warning("telemetry shutdown failed", exc_info=True)

        worker = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(_SHUTDOWN_JOIN)
