"""The fast histogram writes what the SDK's explicit-bucket histogram writes."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from skyflow_vault_plugin.skyflow.telemetry.histogram import (
    CARDINALITY_LIMIT,
    FastHistogram,
    KeyedHistogram,
    MergingInMemoryMetricReader,
    histogram_for,
)
from skyflow_vault_plugin.skyflow.telemetry.otel import LATENCY_BUCKETS_MS

NAMES = ("mount", "role", "outcome", "cache")
SCOPE = InstrumentationScope("skyflow_vault_plugin", "9.9.9")
# On the bounds (buckets are (previous, bound]), between them, below the first, above the
# last, and zero.
VALUES = [0.0, 0.1, 0.1000001, 0.3, 1.0, 2.5, 7, 30000, 30000.5, 123456.0, 0.05]
KEYS = [
    ("insurance", "producer", "success", "hit"),
    ("insurance", "producer", "success", "miss"),
    ("lending", "", "error", "none"),
]


def _points(reader: MetricReader, name: str) -> list[HistogramDataPoint]:
    data = reader.get_metrics_data()  # type: ignore[attr-defined]
    found = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
    return sorted(found, key=lambda p: sorted((p.attributes or {}).items()))


def _comparable(point: HistogramDataPoint) -> tuple[Any, ...]:
    return (
        dict(point.attributes or {}),
        point.count,
        pytest.approx(point.sum),
        list(point.bucket_counts),
        list(point.explicit_bounds),
        point.min,
        point.max,
    )


def _keyed(
    reader: MetricReader, boundaries: Sequence[float] = (1.0,)
) -> tuple[MeterProvider, KeyedHistogram]:
    """A provider with ``reader``, and ``histogram_for`` that reader. As in the plugin,
    another instrument of the meter has a point at every collection (a collection without
    any SDK point reaches no reader: the fast points would wait for the next)."""
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("skyflow_vault_plugin", "9.9.9")
    meter.create_counter("requests").add(1)
    keyed = histogram_for(
        meter,
        [reader],
        SCOPE,
        name="duration",
        unit="ms",
        description="",
        boundaries=boundaries,
        names=NAMES,
    )
    return provider, keyed


def _pair(
    temporality: AggregationTemporality,
) -> tuple[MetricReader, Any, MetricReader, Any]:
    """The SDK's histogram and the fast one, each with its own provider and reader."""
    preferred: dict[type, AggregationTemporality] = {Histogram: temporality}
    sdk_reader = InMemoryMetricReader(preferred_temporality=preferred)
    sdk_meter = MeterProvider(metric_readers=[sdk_reader]).get_meter("skyflow_vault_plugin")
    sdk = sdk_meter.create_histogram(
        "duration", unit="ms", explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_MS
    )
    fast_reader = MergingInMemoryMetricReader(preferred_temporality=preferred)
    _, fast = _keyed(fast_reader, LATENCY_BUCKETS_MS)
    assert isinstance(fast, FastHistogram)
    return sdk_reader, sdk, fast_reader, fast


@pytest.mark.parametrize(
    "temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
)
def test_points_match_the_sdks_over_two_collections(temporality: AggregationTemporality) -> None:
    sdk_reader, sdk, fast_reader, fast = _pair(temporality)
    for rounds in (VALUES, VALUES[:4]):
        for key in KEYS[: 2 if rounds is VALUES else 3]:
            for value in rounds:
                sdk.record(value, dict(zip(NAMES, key, strict=True)))
                fast.record(value, key)
        expected = [_comparable(p) for p in _points(sdk_reader, "duration")]
        assert [_comparable(p) for p in _points(fast_reader, "duration")] == expected
        assert expected  # something was compared


def test_a_delta_reader_sees_only_what_came_since_its_last_collection() -> None:
    _, _, reader, fast = _pair(AggregationTemporality.DELTA)
    fast.record(1.0, KEYS[0])
    (first,) = _points(reader, "duration")
    assert first.count == 1
    assert _points(reader, "duration") == []  # nothing new
    fast.record(3.0, KEYS[0])
    (second,) = _points(reader, "duration")
    assert (second.count, second.min, second.max) == (1, 3.0, 3.0)
    assert second.start_time_unix_nano >= first.time_unix_nano


def test_the_points_join_the_meters_own_scope() -> None:
    reader = MergingInMemoryMetricReader()
    _, fast = _keyed(reader)
    fast.record(0.5, KEYS[0])
    data = reader.get_metrics_data()
    assert data is not None
    (resource,) = data.resource_metrics
    (scope,) = resource.scope_metrics
    assert sorted(m.name for m in scope.metrics) == ["duration", "requests"]


def test_readers_that_cannot_carry_it_get_the_sdks_histogram() -> None:
    for reader in (
        InMemoryMetricReader(),  # not a merging reader
        MergingInMemoryMetricReader(
            preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
        ),
    ):
        _, keyed = _keyed(reader)
        assert not isinstance(keyed, FastHistogram)
        keyed.record(0.5, KEYS[0])
        (point,) = _points(reader, "duration")
        assert dict(point.attributes or {}) == dict(zip(NAMES, KEYS[0], strict=True))


def test_attribute_sets_beyond_the_limit_share_the_overflow_point() -> None:
    _, _, reader, fast = _pair(AggregationTemporality.CUMULATIVE)
    for n in range(CARDINALITY_LIMIT + 10):
        fast.record(1.0, ("m", f"role-{n}", "success", "hit"))
    points = _points(reader, "duration")
    assert len(points) == CARDINALITY_LIMIT
    (overflow,) = [p for p in points if "otel.metric.overflow" in (p.attributes or {})]
    assert overflow.count == 11
    assert sum(p.count for p in points) == CARDINALITY_LIMIT + 10


def test_records_from_threads_while_a_delta_reader_collects_are_all_counted() -> None:
    _, _, reader, fast = _pair(AggregationTemporality.DELTA)
    per_thread, threads = 5000, 4

    def work() -> None:
        for n in range(per_thread):
            fast.record(float(n % 50), KEYS[n % 2])

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    seen = 0
    while any(w.is_alive() for w in workers):
        seen += sum(p.count for p in _points(reader, "duration"))
    for worker in workers:
        worker.join()
    seen += sum(p.count for p in _points(reader, "duration"))
    assert seen == per_thread * threads


@pytest.mark.parametrize(
    ("setting", "fast"),
    [
        (None, True),
        ("explicit_bucket_histogram", True),
        ("base2_exponential_bucket_histogram", False),
    ],
)
def test_the_plugins_otlp_reader_takes_the_fast_histogram_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, fast: bool
) -> None:
    """The OTLP exporter asks for explicit buckets by name (the default); asked for
    exponential ones, the SDK's histogram serves."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    from skyflow_vault_plugin.skyflow.telemetry.histogram import (
        MergingPeriodicExportingMetricReader,
    )

    variable = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
    if setting is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, setting)
    exporter = OTLPMetricExporter(endpoint="http://127.0.0.1:9/v1/metrics")
    reader = MergingPeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
    assert reader.aggregates_histograms_by_default is fast
    provider, keyed = _keyed(reader)
    assert isinstance(keyed, FastHistogram) is fast
    provider.shutdown()
