"""A histogram recorded on the request path without the SDK's per-measurement work.

The SDK's ``Histogram.record`` builds a measurement, cleans and hashes its attributes and
walks the consumer chain on every call: about 8 µs, the largest part of telemetry's own cost
on a warm ``creds`` read (docs/performance.md). :class:`FastHistogram` is recorded once per
request instead: a bucket search and a few additions under a lock, keyed by the attribute
values in a fixed order. Its points are added to each collection of a
:class:`MergingMetricReader` (the SDK's documented extension point for readers,
``_receive_metrics``), with that reader's temporality, as the SDK would write them for an
explicit-bucket histogram: the same buckets, count, sum, min and max, and, for delta
temporality, only what was recorded since that reader's previous collection. (A collection
in which no SDK instrument has a point reaches no reader at all; the fast points then wait
for the next one, whole. The plugin's counters have points from its first request on.)

Where the SDK must aggregate instead (a reader that is not a merging one, or one that asks
for another aggregation of histograms, e.g. exponential buckets), :func:`histogram_for`
returns the SDK's own instrument behind the same ``record`` call.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from opentelemetry.metrics import Histogram as ApiHistogram
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    DefaultAggregation,
    ExplicitBucketHistogramAggregation,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = [
    "CARDINALITY_LIMIT",
    "FastHistogram",
    "KeyedHistogram",
    "MergingInMemoryMetricReader",
    "MergingMetricReader",
    "MergingPeriodicExportingMetricReader",
    "histogram_for",
]

CARDINALITY_LIMIT = 2000
"""Attribute sets per histogram, as the SDK's default: further ones go to one overflow
point (``otel.metric.overflow``)."""
_OVERFLOW = "otel.metric.overflow"


class KeyedHistogram(Protocol):
    """What the engine records into: a value and the attribute values in ``names`` order."""

    def record(self, value: float, key: tuple[str, ...]) -> None: ...


class _Point:
    """One attribute set's aggregate since a start time."""

    __slots__ = ("buckets", "count", "max", "min", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf


class _Table:
    """The points of one temporality: one table for every cumulative reader, and one for
    each delta reader (emptied at each of its collections)."""

    __slots__ = ("points", "start_ns")

    def __init__(self, start_ns: int) -> None:
        self.points: dict[tuple[str, ...] | None, _Point] = {}
        self.start_ns = start_ns


class FastHistogram:
    """An explicit-bucket histogram with a fixed attribute list.

    ``record`` may be called from any thread; readers collect from theirs.
    """

    def __init__(
        self,
        name: str,
        *,
        unit: str,
        description: str,
        boundaries: Sequence[float],
        names: Sequence[str],
        scope: InstrumentationScope,
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.boundaries = tuple(float(b) for b in boundaries)
        self.names = tuple(names)
        self.scope = scope
        self._lock = threading.Lock()
        self._cumulative = _Table(time.time_ns())
        self._tables: list[_Table] = []  # what a record adds to: one per watching reader kind
        self._delta: dict[int, _Table] = {}  # by id() of the reader

    def record(self, value: float, key: tuple[str, ...]) -> None:
        """Add ``value`` (a finite, non-negative duration) for the attribute values ``key``."""
        # OTel explicit buckets are (previous bound, bound]: the first bound >= value.
        index = bisect.bisect_left(self.boundaries, value)
        with self._lock:
            for table in self._tables:
                points = table.points
                point = points.get(key)
                if point is None:
                    overflow = len(points) >= CARDINALITY_LIMIT - 1
                    point = points.setdefault(
                        None if overflow else key, _Point(len(self.boundaries) + 1)
                    )
                point.buckets[index] += 1
                point.count += 1
                point.sum += value
                if value < point.min:
                    point.min = value
                if value > point.max:
                    point.max = value

    def watch(self, reader: MetricReader, temporality: AggregationTemporality) -> None:
        """Keep what ``reader`` needs: its own table when it wants deltas, else the table
        that every cumulative reader shares."""
        with self._lock:
            if temporality is AggregationTemporality.DELTA:
                table = self._delta[id(reader)] = _Table(time.time_ns())
                self._tables.append(table)
            elif self._cumulative not in self._tables:
                self._tables.append(self._cumulative)

    def metric(self, reader: MetricReader) -> Metric | None:
        """What ``reader`` collects now, with the temporality it was watched with (``None``:
        nothing was recorded)."""
        now = time.time_ns()
        temporality = AggregationTemporality.CUMULATIVE
        with self._lock:
            if id(reader) in self._delta:
                temporality = AggregationTemporality.DELTA
                table = self._delta[id(reader)]
                fresh = self._delta[id(reader)] = _Table(now)
                self._tables[self._tables.index(table)] = fresh
                snapshot = table.points  # no longer written to
            else:
                table = self._cumulative
                snapshot = {key: _copy(point) for key, point in table.points.items()}
        if not snapshot:
            return None
        points = [
            HistogramDataPoint(
                attributes=self._attributes(key),
                start_time_unix_nano=table.start_ns,
                time_unix_nano=now,
                count=point.count,
                sum=point.sum,
                bucket_counts=list(point.buckets),
                explicit_bounds=self.boundaries,
                min=point.min,
                max=point.max,
            )
            for key, point in snapshot.items()
        ]
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=points, aggregation_temporality=temporality),
        )

    def _attributes(self, key: tuple[str, ...] | None) -> dict[str, str | bool]:
        if key is None:
            return {_OVERFLOW: True}
        return dict(zip(self.names, key, strict=True))


def _copy(point: _Point) -> _Point:
    copy = _Point(0)
    copy.buckets = list(point.buckets)
    copy.count, copy.sum, copy.min, copy.max = point.count, point.sum, point.min, point.max
    return copy


class MergingMetricReader(MetricReader):
    """A reader whose collections also carry the points of its :class:`FastHistogram`\\ s,
    in the histogram's instrumentation scope."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before the reader's own set-up: a periodic reader's thread may collect at once.
        self._fast_histograms: list[FastHistogram] = []
        super().__init__(*args, **kwargs)

    def add_histogram(self, histogram: FastHistogram) -> None:
        """Merge ``histogram`` into this reader's collections from now on."""
        histogram.watch(self, self.histogram_temporality)
        self._fast_histograms.append(histogram)

    @property
    def histogram_temporality(self) -> AggregationTemporality:
        """The temporality this reader wants for histograms."""
        for kind, temporality in self._instrument_class_temporality.items():
            if issubclass(kind, SdkHistogram):
                return temporality
        return AggregationTemporality.CUMULATIVE

    @property
    def aggregates_histograms_by_default(self) -> bool:
        """Whether this reader takes the default (explicit-bucket) aggregation for
        histograms, the one :class:`FastHistogram` writes."""
        for kind, aggregation in self._instrument_class_aggregation.items():
            if issubclass(kind, SdkHistogram):
                return _is_default_explicit(aggregation)
        return True

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        # The next class in the concrete reader's order (the periodic or the in-memory one,
        # below) receives the collection with the fast points added; mypy sees only the
        # abstract MetricReader here.
        super()._receive_metrics(  # type: ignore[safe-super]
            self._merged(metrics_data), timeout_millis, **kwargs
        )

    def _merged(self, metrics_data: MetricsData) -> MetricsData:
        extra: dict[InstrumentationScope, list[Metric]] = {}
        for histogram in self._fast_histograms:
            metric = histogram.metric(self)
            if metric is not None:
                extra.setdefault(histogram.scope, []).append(metric)
        if not extra:
            return metrics_data
        resources = list(metrics_data.resource_metrics)
        if not resources:
            return metrics_data  # no resource to put them in: nothing was collected at all
        first = resources[0]
        scopes = []
        for scope_metrics in first.scope_metrics:
            added = extra.pop(scope_metrics.scope, [])
            if added:
                scope_metrics = ScopeMetrics(
                    scope=scope_metrics.scope,
                    metrics=[*scope_metrics.metrics, *added],
                    schema_url=scope_metrics.schema_url,
                )
            scopes.append(scope_metrics)
        scopes += [
            ScopeMetrics(scope=scope, metrics=metrics, schema_url=scope.schema_url or "")
            for scope, metrics in extra.items()
        ]
        resources[0] = ResourceMetrics(
            resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url
        )
        return MetricsData(resource_metrics=resources)


def _is_default_explicit(aggregation: Aggregation) -> bool:
    """The default aggregation, or explicit buckets with every setting at its default (what
    the OTLP exporter asks for unless told otherwise): the instrument's advisory buckets,
    min and max recorded."""
    if type(aggregation) is DefaultAggregation:
        return True
    default = ExplicitBucketHistogramAggregation()
    return type(aggregation) is type(default) and vars(aggregation) == vars(default)


class MergingPeriodicExportingMetricReader(MergingMetricReader, PeriodicExportingMetricReader):
    """The OTLP exporting reader, with the fast histograms' points."""


class MergingInMemoryMetricReader(MergingMetricReader, InMemoryMetricReader):
    """The in-memory reader (tests), with the fast histograms' points."""


class _SdkKeyed:
    """The SDK's histogram behind :class:`KeyedHistogram`."""

    __slots__ = ("histogram", "names")

    def __init__(self, histogram: ApiHistogram, names: Sequence[str]) -> None:
        self.histogram = histogram
        self.names = tuple(names)

    def record(self, value: float, key: tuple[str, ...]) -> None:
        self.histogram.record(value, dict(zip(self.names, key, strict=True)))


def histogram_for(
    meter: Meter,
    readers: Sequence[MetricReader],
    scope: InstrumentationScope,
    *,
    name: str,
    unit: str,
    description: str,
    boundaries: Sequence[float],
    names: Sequence[str],
) -> KeyedHistogram:
    """A :class:`FastHistogram` merged into ``readers`` when every one of them can carry
    it; otherwise the SDK's histogram (with ``boundaries`` as its advisory buckets)."""
    if readers and all(
        isinstance(r, MergingMetricReader) and r.aggregates_histograms_by_default for r in readers
    ):
        fast = FastHistogram(
            name,
            unit=unit,
            description=description,
            boundaries=boundaries,
            names=names,
            scope=scope,
        )
        for reader in readers:
            assert isinstance(reader, MergingMetricReader)
            reader.add_histogram(fast)
        return fast
    sdk = meter.create_histogram(
        name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
    )
    return _SdkKeyed(sdk, names)
