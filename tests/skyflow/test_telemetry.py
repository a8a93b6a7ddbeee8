"""Telemetry: settings from the environment, labels, and spans, metrics and the audit line
recorded through the engine (both drivers) with in-memory exporters and the in-process
emulator. No secret -- private key, access token, ctx value -- may reach any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import SpanKind, StatusCode

from skyflow_devtools.otlp import OTLPSink, otlp_sink
from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults
from skyflow_vault_plugin.skyflow.backend import make_factory
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.errors import (
    CredentialsError,
    InvalidContext,
    SkyflowRejected,
    SkyflowUnavailable,
)
from skyflow_vault_plugin.skyflow.mount import EngineSettings
from skyflow_vault_plugin.skyflow.telemetry import (
    AUDIT_LOGGER,
    CONFIG_READ,
    ROLE_READ,
    TOKEN_GENERATE,
    ApplicationLabels,
    Telemetry,
    TelemetrySettings,
    TelemetrySettingsError,
    classify_error,
    create_telemetry,
    mount_name,
    note_cache,
    note_ctx,
    note_error,
    otel,
    otlp_spans,
    trace_id_from_traceparent,
)
from skyflow_vault_plugin.skyflow.telemetry.disabled import AUDIT_TEMPLATE_LIMIT
from skyflow_vault_plugin.skyflow.telemetry.histogram import MergingInMemoryMetricReader
from skyflow_vault_plugin.skyflow.telemetry.labels import MEMO_BUDGET, MEMO_MAX_BYTES, Memo
from skyflow_vault_plugin.skyflow.telemetry.otel import OTelTelemetry
from skyflow_vault_plugin.skyflow.telemetry.otlp_spans import Unsupported
from skyflow_vault_plugin.skyflow.telemetry.scope import OpScope, current_scope
from skyflow_vault_plugin.skyflow.telemetry.settings import parse_duration
from vault_plugin_sdk.framework import (
    BadRequest,
    CodedError,
    FieldData,
    FieldError,
    PermissionDenied,
    Request,
    Response,
    StorageError,
)
from vault_plugin_sdk.plugin.hclog import HclogFormatter, LoopBatchedHandler
from vault_plugin_sdk.plugin.pb import backend_pb2 as pb
from vault_plugin_sdk.testing import InMemoryStorage, PluginTestClient, open_driver

EMULATOR_HOSTS = TokenHosts.parse("emulator.test")  # the in-process emulator's host

FAST = ExchangePolicy(deadline=5.0, backoff_base=0.01, backoff_max=0.02)
MOUNT = "skyflow/insurance/"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


# ------------------------------------------------------------------------------- settings


def test_defaults_export_nothing_without_an_endpoint() -> None:
    settings = TelemetrySettings.from_env({})
    assert not settings.active
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in settings.disabled_reason
    assert settings.audit_log
    assert dataclasses.replace(settings, disabled_reason="") == TelemetrySettings()


def test_an_endpoint_switches_both_signals_on() -> None:
    settings = TelemetrySettings.from_env(ENDPOINT)
    assert settings.traces_enabled
    assert settings.metrics_enabled
    assert settings.sample_rate == 1.0
    assert settings.metrics_export_interval == 60.0
    assert settings.traces_timeout is None
    assert settings.traces_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert settings.metrics_endpoint == "http://127.0.0.1:4318/v1/metrics"


def test_a_signal_endpoint_switches_only_that_signal_on() -> None:
    settings = TelemetrySettings.from_env(
        {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://otel.example/v1/metrics"}
    )
    assert settings.metrics_enabled
    assert not settings.traces_enabled
    assert settings.metrics_endpoint == "https://otel.example/v1/metrics"
    assert settings.traces_endpoint is None


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"ENV": "dev", "TELEMETRY_ENABLED": "true", **ENDPOINT}, "ENV=dev"),
        ({"ENV": "DEV", **ENDPOINT}, "ENV=dev"),
        ({"TELEMETRY_ENABLED": "false", **ENDPOINT}, "TELEMETRY_ENABLED=false"),
        ({"TELEMETRY_ENABLED": "0", **ENDPOINT}, "TELEMETRY_ENABLED=false"),
        ({"OTEL_SDK_DISABLED": "true", **ENDPOINT}, "OTEL_SDK_DISABLED=true"),
        (
            {"TELEMETRY_TRACES_ENABLED": "false", "TELEMETRY_METRICS_ENABLED": "no", **ENDPOINT},
            "TELEMETRY_TRACES_ENABLED=false",
        ),
    ],
)
def test_switches_turn_everything_off(env: dict[str, str], reason: str) -> None:
    settings = TelemetrySettings.from_env(env)
    assert not settings.active
    assert reason in settings.disabled_reason


def test_enabled_explicitly_exports_to_the_default_endpoint() -> None:
    settings = TelemetrySettings.from_env(
        {"TELEMETRY_ENABLED": "true", "TELEMETRY_METRICS_ENABLED": "false", "ENV": "prod"}
    )
    assert settings.traces_enabled
    assert not settings.metrics_enabled
    assert settings.environment == "prod"


def test_values_are_parsed() -> None:
    settings = TelemetrySettings.from_env(
        {
            **ENDPOINT,
            "TELEMETRY_SAMPLE_RATE": "0.25",
            "TELEMETRY_METRICS_EXPORT_INTERVAL": "1m30s",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "4s",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "TELEMETRY_APPLICATION_ALLOWLIST": "Claims-Portal, underwriting ,",
            "TELEMETRY_APPLICATION_MAX_VALUES": "5",
            "SKYFLOW_AUDIT_LOG": "off",
        }
    )
    assert settings.sample_rate == 0.25
    assert settings.metrics_export_interval == 90.0
    assert settings.traces_timeout == 2.5  # milliseconds, as the OTel specification says
    assert settings.metrics_timeout == 4.0
    assert settings.application_allowlist == frozenset({"claims-portal", "underwriting"})
    assert settings.application_max_values == 5
    assert not settings.audit_log


def test_the_standard_export_interval_is_a_fallback_in_milliseconds() -> None:
    settings = TelemetrySettings.from_env({**ENDPOINT, "OTEL_METRIC_EXPORT_INTERVAL": "250"})
    assert settings.metrics_export_interval == 0.25


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TELEMETRY_ENABLED", "maybe"),
        ("TELEMETRY_SAMPLE_RATE", "1.5"),
        ("TELEMETRY_SAMPLE_RATE", "half"),
        ("TELEMETRY_METRICS_EXPORT_INTERVAL", "10 parsecs"),
        ("TELEMETRY_METRICS_EXPORT_INTERVAL", "0"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("TELEMETRY_APPLICATION_ALLOWLIST", "ok,not ok"),
        ("TELEMETRY_APPLICATION_MAX_VALUES", "many"),
        ("TELEMETRY_APPLICATION_MAX_VALUES", "100000"),
        ("ENV", "prod env"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(TelemetrySettingsError) as info:
        TelemetrySettings.from_env({**ENDPOINT, name: value})
    assert info.value.variable == name


def test_settings_are_frozen() -> None:
    settings = TelemetrySettings.from_env(ENDPOINT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.sample_rate = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "unit", "seconds"),
    [("10", 1.0, 10.0), ("500ms", 1.0, 0.5), ("1m30s", 1.0, 90.0), ("2500", 0.001, 2.5)],
)
def test_parse_duration(text: str, unit: float, seconds: float) -> None:
    assert parse_duration(text, bare_unit=unit) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1m 30s", "nan", "ms10"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_duration(text, bare_unit=1.0)


def test_invalid_settings_switch_telemetry_off_not_the_plugin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        telemetry = create_telemetry({**ENDPOINT, "TELEMETRY_SAMPLE_RATE": "2"})
    assert type(telemetry) is Telemetry
    assert "TELEMETRY_SAMPLE_RATE" in caplog.text


def test_create_telemetry_builds_the_otlp_pipeline() -> None:
    telemetry = create_telemetry(
        {**ENDPOINT, "TELEMETRY_METRICS_EXPORT_INTERVAL": "1h", "OTEL_EXPORTER_OTLP_TIMEOUT": "50"}
    )
    try:
        assert isinstance(telemetry, OTelTelemetry)
        assert telemetry.tracer is not None
        assert telemetry.meter_provider is not None
    finally:
        telemetry.shutdown()
        telemetry.shutdown()  # idempotent
    assert not [t.name for t in threading.enumerate() if t.name.startswith("Otel")]


# --------------------------------------------------------------------------------- labels


def test_mount_name_is_the_whole_mount_path() -> None:
    """Two tenants ``a/insurance`` and ``b/insurance`` must not merge into one label."""
    assert mount_name("skyflow/insurance/") == "skyflow/insurance"
    assert mount_name("skyflow/") == "skyflow"
    assert mount_name("a/insurance/") != mount_name("b/insurance/")
    assert mount_name("") == ""


def test_application_allowlist() -> None:
    labels = ApplicationLabels(frozenset({"claims-portal"}), 20)
    assert labels.label("Claims-Portal") == "claims-portal"
    assert labels.label("something-else") == "other"
    assert labels.label(None) == "none"
    assert labels.label("  ") == "none"


def test_application_cardinality_cap() -> None:
    labels = ApplicationLabels(None, 2)
    assert [labels.label(v) for v in ("a", "b", "c", "A", "b")] == ["a", "b", "other", "a", "b"]
    assert labels.label("x" * 65) == "other"
    assert labels.label("bad value;") == "other"
    assert labels.admitted == frozenset({"a", "b"})
    assert ApplicationLabels(None, 0).label("a") == "other"


def test_a_memo_keeps_to_its_count_its_budget_and_its_longest_entry() -> None:
    counted = Memo[str, str](max_entries=4, budget=1_000)
    for index in range(10):
        counted.keep(f"k{index}", "v", 1)
        assert len(counted.entries) <= 4
    assert counted.entries["k9"] == "v"  # it starts over, and keeps the newest
    sized = Memo[str, str](max_entries=1_000, budget=100)
    for index in range(10):
        sized.keep(f"k{index}", "x" * 30, 30)
        assert sized.size == 30 * len(sized.entries) <= 100
    sized.keep("k9", "x" * 30, 30)  # already kept: not counted twice
    assert sized.size == 30 * len(sized.entries)
    sized.keep("long", "x" * (MEMO_MAX_BYTES + 1), MEMO_MAX_BYTES + 1)
    assert "long" not in sized.entries


def _request(**headers: str) -> Request:
    return Request(
        operation="read",
        path="creds/x",
        storage=InMemoryStorage(),
        headers={k: [v] for k, v in headers.items()},
    )


def test_trace_id_from_traceparent() -> None:
    assert trace_id_from_traceparent(_request()) == ""
    good = _request(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    assert trace_id_from_traceparent(good) == TRACE_ID
    assert trace_id_from_traceparent(_request(traceparent="00-zz-yy-01")) == ""
    zero = _request(traceparent=f"00-{'0' * 32}-{PARENT_ID}-01")
    assert trace_id_from_traceparent(zero) == ""


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer from None
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (CodedError(404, "role 'x' does not exist"), "not_found"),
        (BadRequest("nope"), "bad_request"),
        (FieldError("ctx", "bad"), "invalid_input"),
        (PermissionDenied(), "permission_denied"),
        (CodedError(409, "conflict"), "http_409"),
        (StorageError("down"), "storage"),
        (RuntimeError("boom"), "internal"),
        (asyncio.CancelledError(), "cancelled"),
        (SkyflowRejected("no", status=401), "skyflow_rejected"),
        (SkyflowUnavailable("busy", status=429), "skyflow_rate_limited"),
        (SkyflowUnavailable("down", status=503), "skyflow_unavailable"),
        (SkyflowUnavailable("unreachable"), "skyflow_unreachable"),
        (SkyflowUnavailable("the request deadline passed"), "skyflow_timeout"),
        (_chained(FieldError("ctx", "x"), InvalidContext("bad key")), "invalid_ctx"),
        (_chained(FieldError("c", "x"), CredentialsError("c", "bad")), "invalid_credentials"),
        (_chained(CodedError(502, "x"), SkyflowRejected("no", status=403)), "skyflow_rejected"),
    ],
)
def test_classify_error(exc: BaseException, expected: str) -> None:
    assert classify_error(exc) == expected


def test_timeouts_are_told_apart_by_their_cause() -> None:
    def caused(cause: BaseException) -> SkyflowUnavailable:
        try:
            raise SkyflowUnavailable("Skyflow timed out") from cause
        except SkyflowUnavailable as exc:
            return exc

    assert classify_error(caused(TimeoutError())) == "skyflow_timeout"
    assert classify_error(caused(ConnectionRefusedError())) == "skyflow_unreachable"


# ------------------------------------------------------------------- the disabled default


async def _handler(req: Request, data: Any) -> None:
    note_cache("hit")  # outside an instrumented request: does nothing


async def test_disabled_telemetry_adds_nothing_to_the_hot_path() -> None:
    telemetry = Telemetry()
    assert not telemetry.enabled
    assert telemetry.on_attempt is None
    assert telemetry.upstream_exchange() is telemetry.upstream_exchange()
    assert telemetry.instrument(ROLE_READ, _handler) is _handler
    assert telemetry.instrument(CONFIG_READ, _handler) is _handler
    quiet = Telemetry(TelemetrySettings(audit_log=False))
    assert quiet.instrument(TOKEN_GENERATE, _handler) is _handler
    await _handler(_request(), None)
    await telemetry.flush()
    telemetry.shutdown()


DISABLED_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    from skyflow_emulator import InProcessEmulator
    from vault_plugin_sdk.testing import PluginTestClient, open_driver
    from skyflow_vault_plugin.skyflow.backend import make_factory
    from skyflow_vault_plugin.skyflow.mount import EngineSettings
    from skyflow_vault_plugin.skyflow.credentials import TokenHosts

    async def main():
        emulator = InProcessEmulator()
        hosts = TokenHosts.parse("emulator.test")
        settings = EngineSettings(transport=emulator.transport(), allowed_token_hosts=hosts)
        async with open_driver("grpc", make_factory(settings)) as driver:
            client = PluginTestClient(driver, mount_point="skyflow/insurance/")
            creds = json.dumps(emulator.create_account())
            assert (await client.write("config", {"credentials_json": creds})).status == 200
            assert (await client.write("roles/r", {"role_ids": ["a"]})).status == 200
            assert (await client.read("creds/r")).status == 200
            assert (await client.read("health")).status == 200
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        print(json.dumps({"otel": loaded, "threads": [t.name for t in threading.enumerate()]}))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    "switch",
    [{"ENV": "dev", "TELEMETRY_ENABLED": "true"}, {"TELEMETRY_ENABLED": "false"}],
)
def test_switched_off_the_plugin_loads_no_sdk_and_starts_no_thread(
    switch: dict[str, str],
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TELEMETRY_"))}
    env.update({**ENDPOINT, **switch})
    result = subprocess.run(
        [sys.executable, "-c", DISABLED_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["otel"] == []
    assert report["threads"] == ["MainThread"]


# --------------------------------------------------------------- through the engine


@dataclass
class Recorded:
    """An enabled telemetry with in-memory exporters, and ways to read what it recorded."""

    telemetry: OTelTelemetry
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [span for span in found if name is None or span.name == name]

    def span(self, name: str) -> ReadableSpan:
        found = self.spans(name)
        assert len(found) == 1, [span.name for span in self.spans()]
        return found[0]

    def points(self) -> list[tuple[str, dict[str, Any], float]]:
        """(metric, attributes, value) with value the sum, or the count of a histogram."""
        data = self.reader.get_metrics_data()
        out: list[tuple[str, dict[str, Any], float]] = []
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        out.append((metric.name, dict(point.attributes or {}), float(value)))
        return out

    def value(self, metric: str, **labels: str) -> float:
        """Sum over the points of ``metric`` whose attributes include ``labels``."""
        return sum(
            value
            for name, attributes, value in self.points()
            if name == metric and all(attributes.get(k) == v for k, v in labels.items())
        )

    def exported_text(self) -> str:
        """Everything exported, as text: span names, attributes, events, metric labels."""
        parts: list[str] = []
        for span in self.spans():
            parts.append(span.name)
            parts.append(repr(dict(span.attributes or {})))
            parts.append(repr(span.status.description))
            for event in span.events:
                parts.append(event.name + repr(dict(event.attributes or {})))
            parts.append(repr(dict(span.resource.attributes)))
        parts.extend(repr(point) for point in self.points())
        return "\n".join(parts)


@contextlib.contextmanager
def recorded(**overrides: Any) -> Iterator[Recorded]:
    """Telemetry with ``overrides``, recording into memory; shut down at the end. The reader
    merges the fast histogram's points, as the plugin's exporting reader does."""
    exporter = InMemorySpanExporter()
    reader = MergingInMemoryMetricReader()
    settings = TelemetrySettings(traces_enabled=True, metrics_enabled=True, **overrides)
    telemetry = OTelTelemetry(
        settings, span_processor=SimpleSpanProcessor(exporter), metric_readers=[reader]
    )
    try:
        yield Recorded(telemetry, exporter, reader)
    finally:
        telemetry.shutdown()


@contextlib.contextmanager
def exporting() -> Iterator[tuple[OTelTelemetry, OTLPSink]]:
    """Telemetry with the plugin's own span pipeline (no injected processor), exporting
    traces over OTLP/HTTP to a local receiver that keeps what it gets; shut down at the end."""
    with otlp_sink(keep=True) as sink:
        endpoint = f"{sink.endpoint}/v1/traces"
        telemetry = OTelTelemetry(TelemetrySettings(traces_enabled=True, traces_endpoint=endpoint))
        try:
            yield telemetry, sink
        finally:
            telemetry.shutdown()


pytestmark = pytest.mark.usefixtures("fresh_emulator")  # a clean emulator for every test


@pytest.fixture
def rec() -> Iterator[Recorded]:
    with recorded() as recording:
        yield recording


@contextlib.asynccontextmanager
async def engine(
    kind: str, emulator: InProcessEmulator, telemetry: Telemetry, *, mount: str = MOUNT
) -> AsyncIterator[PluginTestClient]:
    settings = EngineSettings(
        policy=FAST,
        transport=emulator.transport(),
        telemetry=telemetry,
        allowed_token_hosts=EMULATOR_HOSTS,
    )
    async with open_driver(kind, make_factory(settings)) as driver:
        yield PluginTestClient(driver, mount_point=mount)


async def configure(client: PluginTestClient, creds: Mapping[str, str]) -> None:
    written = await client.write("config", {"credentials_json": json.dumps(creds)})
    assert written.status == 200, written.errors
    role = await client.write("roles/producer", {"role_ids": ["r1", "r2"]})
    assert role.status == 200, role.errors


@contextlib.asynccontextmanager
async def configured(
    kind: str, emulator: InProcessEmulator, telemetry: Telemetry, creds: Mapping[str, str]
) -> AsyncIterator[PluginTestClient]:
    """:func:`engine` with the service account and the ``producer`` role written."""
    async with engine(kind, emulator, telemetry) as client:
        await configure(client, creds)
        yield client


def headers(**values: str) -> dict[str, pb.Header]:
    return {name.replace("_", "-"): pb.Header(header=[value]) for name, value in values.items()}


def secrets_of(creds: Mapping[str, str], *tokens: str) -> list[str]:
    """Every line of the private key (but the PEM armour) and every token given."""
    key_lines = [
        line.strip()
        for line in creds["privateKey"].splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    assert len(key_lines) > 5
    return key_lines + [t for t in tokens if t] + [t.split(".")[-1] for t in tokens if t]


async def test_spans_for_every_operation(
    kind: str, emulator: InProcessEmulator, creds: dict[str, str], rec: Recorded
) -> None:
    async with configured(kind, emulator, rec.telemetry, creds) as client:
        assert (await client.read("config")).status == 200
        assert (await client.read("roles/producer")).status == 200
        assert (await client.read("roles/absent")).status == 404
        assert (await client.list("roles/")).status == 200
        assert (await client.read("creds/producer")).status == 200
        assert (await client.read("health")).status == 200
        assert (await client.delete("roles/producer")).status == 204
        assert (await client.delete("config")).status == 204

    names = [span.name for span in rec.spans()]
    for name in (
        "SkyflowPlugin.Config.Write",
        "SkyflowPlugin.Config.Read",
        "SkyflowPlugin.Config.Delete",
        "SkyflowPlugin.Role.Write",
        "SkyflowPlugin.Role.List",
        "SkyflowPlugin.Role.Delete",
        "SkyflowPlugin.Token.Generate",
        "SkyflowPlugin.Health.Check",
    ):
        assert names.count(name) == 1, (name, names)
    assert names.count("SkyflowPlugin.Role.Read") == 2

    write = rec.span("SkyflowPlugin.Config.Write")
    assert write.kind is SpanKind.SERVER
    attributes = dict(write.attributes or {})
    assert attributes["skyflow.mount"] == "skyflow/insurance"
    assert attributes["skyflow.mount_path"] == MOUNT
    assert attributes["skyflow.operation"] == "create"
    assert attributes["skyflow.outcome"] == "success"
    assert "vault.request.id" not in attributes  # in the audit line, with the trace ID

    # validate_credentials mints once: the exchange is a child of the config write
    auths = rec.spans("SkyflowPlugin.SDK.Auth")
    parents = {span.parent.span_id for span in auths if span.parent}
    assert write.context.span_id in parents
    token = rec.span("SkyflowPlugin.Token.Generate")
    assert token.context.span_id in parents
    assert all(span.kind is SpanKind.CLIENT for span in auths)

    absent = [
        span
        for span in rec.spans("SkyflowPlugin.Role.Read")
        if (span.attributes or {}).get("skyflow.role") == "absent"
    ]
    assert absent[0].attributes is not None
    assert absent[0].attributes["skyflow.found"] is False
    assert rec.value("skyflow_role_operations_total", operation="read", outcome="success") == 2
    assert rec.value("skyflow_config_operations_total", operation="delete") == 1
    assert (
        rec.value("skyflow_health_checks_total", mount="skyflow/insurance", outcome="success") == 1
    )


async def test_token_spans_and_metrics_miss_then_hit(
    kind: str, emulator: InProcessEmulator, creds: dict[str, str], rec: Recorded
) -> None:
    async with configured(kind, emulator, rec.telemetry, creds) as client:
        first = await client.read("creds/producer")
        second = await client.read("creds/producer")
    assert first.status == second.status == 200

    miss, hit = rec.spans("SkyflowPlugin.Token.Generate")
    miss_attrs, hit_attrs = dict(miss.attributes or {}), dict(hit.attributes or {})
    assert miss_attrs["skyflow.cache"] == "miss"
    assert hit_attrs["skyflow.cache"] == "hit"
    assert miss_attrs["skyflow.role"] == "producer"
    assert miss_attrs["skyflow.upstream.status"] == 200
    assert miss_attrs["skyflow.upstream.attempts"] == 1
    upstream_id = miss_attrs["skyflow.upstream.request_id"]
    assert upstream_id in {r.request_id for r in emulator.state.requests}
    assert "skyflow.upstream.status" not in hit_attrs

    auth = rec.spans("SkyflowPlugin.SDK.Auth")[-1]
    assert auth.parent is not None
    assert auth.parent.span_id == miss.context.span_id
    assert auth.context.trace_id == miss.context.trace_id
    assert dict(auth.attributes or {})["http.response.status_code"] == 200
    assert [event.name for event in auth.events] == ["skyflow.attempt"]

    labels = {"mount": "skyflow/insurance", "role": "producer"}
    assert rec.value("skyflow_total_tokens_generated", **labels) == 2
    assert rec.value("skyflow_total_tokens_generated", cache="hit", application="none") == 1
    assert rec.value("skyflow_token_generated_duration_ms", **labels, outcome="success") == 2
    assert rec.value("skyflow_token_cache_lookups_total", **labels, cache="hit") == 1
    assert rec.value("skyflow_token_cache_lookups_total", **labels, cache="miss") == 1
    # one exchange for the config's validation, one for the token
    assert rec.value("skyflow_sdk_call_total", mount="skyflow/insurance", status="200") == 2
    assert rec.value("skyflow_sdk_call_duration_ms", mount="skyflow/insurance", status="200") == 2
    assert rec.value("skyflow_total_tokens_failed") == 0

    secrets = secrets_of(creds, first.data["access_token"], second.data["access_token"])
    text = rec.exported_text()
    assert not [s for s in secrets if s in text]


async def test_spans_are_parented_to_an_incoming_traceparent(
    kind: str, emulator: InProcessEmulator, creds: dict[str, str], rec: Recorded
) -> None:
    async with configured(kind, emulator, rec.telemetry, creds) as client:
        outcome = await client.read(
            "creds/producer",
            headers=headers(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", tracestate="vendor=value"),
        )
    assert outcome.status == 200
    token = rec.span("SkyflowPlugin.Token.Generate")
    assert f"{token.context.trace_id:032x}" == TRACE_ID
    assert token.parent is not None
    assert f"{token.parent.span_id:016x}" == PARENT_ID
    assert token.parent.is_remote
    assert token.context.trace_state.get("vendor") == "value"
    auth = rec.spans("SkyflowPlugin.SDK.Auth")[-1]
    assert f"{auth.context.trace_id:032x}" == TRACE_ID
    assert auth.parent is not None
    assert auth.parent.span_id == token.context.span_id


async def test_sampling_is_parent_based(emulator: InProcessEmulator, creds: dict[str, str]) -> None:
    with recorded(sample_rate=0.0) as never:
        async with configured("direct", emulator, never.telemetry, creds) as client:
            assert (await client.read("creds/producer")).status == 200
            sampled = headers(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
            assert (await client.read("creds/producer", headers=sampled)).status == 200
            unsampled = headers(traceparent=f"00-{'1' * 32}-{PARENT_ID}-00")
            assert (await client.read("creds/producer", headers=unsampled)).status == 200
        # Only the request whose caller sampled its trace was recorded...
        assert [span.name for span in never.spans()] == ["SkyflowPlugin.Token.Generate"]
        assert f"{never.spans()[0].context.trace_id:032x}" == TRACE_ID
        # ...while metrics count every request.
        assert never.value("skyflow_total_tokens_generated", role="producer") == 3


async def test_retries_and_upstream_status(
    emulator: InProcessEmulator, creds: dict[str, str], rec: Recorded
) -> None:
    async with configured("grpc", emulator, rec.telemetry, creds) as client:
        emulator.state.set_faults(Faults(fail_status=503, fail_count=2))
        assert (await client.read("creds/producer")).status == 200
    token = rec.span("SkyflowPlugin.Token.Generate")
    assert dict(token.attributes or {})["skyflow.upstream.attempts"] == 3
    auth = rec.spans("SkyflowPlugin.SDK.Auth")[-1]
    assert [dict(e.attributes or {}).get("http.response.status_code") for e in auth.events] == [
        503,
        503,
        200,
    ]
    assert rec.value("skyflow_sdk_call_total", status="503") == 2
    assert rec.value("skyflow_sdk_call_total", status="200") == 2  # config validation too


@pytest.mark.parametrize(
    ("faults", "status", "error_type", "upstream"),
    [
        (Faults(reject=True), 502, "skyflow_rejected", 401),
        (Faults(fail_status=429), 503, "skyflow_rate_limited", 429),
        (Faults(fail_status=500), 503, "skyflow_unavailable", 500),
    ],
)
async def test_token_failures_by_error_type(
    emulator: InProcessEmulator,
    creds: dict[str, str],
    rec: Recorded,
    faults: Faults,
    status: int,
    error_type: str,
    upstream: int,
) -> None:
    async with configured("direct", emulator, rec.telemetry, creds) as client:
        emulator.state.set_faults(faults)
        assert (await client.read("creds/producer")).status == status
    token = rec.span("SkyflowPlugin.Token.Generate")
    attributes = dict(token.attributes or {})
    assert attributes["skyflow.outcome"] == "error"
    assert attributes["error.type"] == error_type
    assert attributes["skyflow.upstream.status"] == upstream
    assert attributes["skyflow.upstream.request_id"]
    assert token.status.status_code is StatusCode.ERROR
    assert token.status.description == error_type
    auth = rec.spans("SkyflowPlugin.SDK.Auth")[-1]
    assert dict(auth.attributes or {})["error.type"] == error_type
    labels = {"mount": "skyflow/insurance", "role": "producer"}
    assert rec.value("skyflow_total_tokens_failed", **labels, error_type=error_type) == 1
    assert rec.value("skyflow_token_generated_duration_ms", **labels, outcome="error") == 1
    assert rec.value("skyflow_sdk_call_total", status=str(upstream)) >= 1


async def test_request_errors_by_type_with_bounded_role_labels(
    emulator: InProcessEmulator, creds: dict[str, str], rec: Recorded
) -> None:
    async with engine("direct", emulator, rec.telemetry) as client:
        await client.write("roles/producer", {"role_ids": ["r1"]})
        assert (await client.read("creds/producer")).status == 400  # not configured
        assert (await client.read("health")).status == 503
        await configure(client, creds)
        for name in ("ghost-1", "ghost-2"):
            assert (await client.read(f"creds/{name}")).status == 400
        bad = await client.write("creds/producer", {"ctx": {"bad key": "x"}})
        assert bad.status == 400
    failed = {
        (attributes["role"], attributes["error_type"])
        for name, attributes, _ in rec.points()
        if name == "skyflow_total_tokens_failed"
    }
    assert failed == {
        ("producer", "not_configured"),
        ("_unknown", "not_found"),
        ("producer", "invalid_ctx"),
    }
    assert rec.value("skyflow_total_tokens_failed", error_type="not_found") == 2
    assert rec.value("skyflow_health_checks_total", outcome="error", error_type="unhealthy") == 1
    health = rec.span("SkyflowPlugin.Health.Check")
    assert dict(health.attributes or {})["error.type"] == "unhealthy"


async def test_ctx_keys_only_never_values(
    kind: str,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    rec: Recorded,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_value = "alice-ssn-078-05-1120"
    async with configured(kind, emulator, rec.telemetry, creds) as client:
        with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
            outcome = await client.write(
                "creds/producer", {"ctx": {"user_id": secret_value, "branch": "nyc"}}
            )
            text_ctx = await client.read("creds/producer", {"ctx": secret_value})
    assert outcome.status == text_ctx.status == 200
    map_span, string_span = rec.spans("SkyflowPlugin.Token.Generate")
    assert dict(map_span.attributes or {})["skyflow.ctx.type"] == "map"
    assert tuple(dict(map_span.attributes or {})["skyflow.ctx.keys"]) == ("branch", "user_id")  # type: ignore[arg-type]
    assert dict(string_span.attributes or {})["skyflow.ctx.type"] == "string"
    assert secret_value not in rec.exported_text()
    assert secret_value not in caplog.text
    assert "branch,user_id" in {getattr(r, "ctx_keys", "") for r in caplog.records}


async def test_application_source_is_a_bounded_label(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    with recorded(application_max_values=1) as capped:
        async with configured("grpc", emulator, capped.telemetry, creds) as client:
            for app in ("Claims-Portal", "claims-portal", "billing", "x" * 300):
                source = headers(Application_Source=app)
                assert (await client.read("creds/producer", headers=source)).status == 200
        apps = [
            dict(span.attributes or {})["skyflow.application"]
            for span in capped.spans("SkyflowPlugin.Token.Generate")
        ]
        assert apps == ["claims-portal", "claims-portal", "other", "other"]
        assert capped.value("skyflow_total_tokens_generated", application="claims-portal") == 2
        assert capped.value("skyflow_total_tokens_generated", application="other") == 2


async def test_application_slots_are_per_mount(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    """One tenant cycling Application-Source values uses up its own slots only; and two
    mounts whose paths end alike keep apart."""
    with recorded(application_max_values=2) as capped:
        async with (
            engine("direct", emulator, capped.telemetry, mount="a/insurance/") as noisy,
            engine("direct", emulator, capped.telemetry, mount="b/insurance/") as quiet,
        ):
            await configure(noisy, creds)
            await configure(quiet, creds)
            for app in ("n1", "n2", "n3", "n4"):
                source = headers(Application_Source=app)
                assert (await noisy.read("creds/producer", headers=source)).status == 200
            source = headers(Application_Source="claims-portal")
            assert (await quiet.read("creds/producer", headers=source)).status == 200
        assert (
            capped.value(
                "skyflow_total_tokens_generated", mount="b/insurance", application="claims-portal"
            )
            == 1
        )
        assert (
            capped.value("skyflow_total_tokens_generated", mount="a/insurance", application="other")
            == 2
        )
        assert capped.value("skyflow_total_tokens_generated", mount="a/insurance") == 4


async def test_concurrent_misses_coalesce(
    emulator: InProcessEmulator, creds: dict[str, str], rec: Recorded
) -> None:
    async with configured("direct", emulator, rec.telemetry, creds) as client:
        emulator.state.set_faults(Faults(latency=0.2))
        outcomes = await asyncio.gather(*(client.read("creds/producer") for _ in range(3)))
    assert [o.status for o in outcomes] == [200, 200, 200]
    caches = sorted(
        str(dict(span.attributes or {})["skyflow.cache"])
        for span in rec.spans("SkyflowPlugin.Token.Generate")
    )
    assert caches == ["coalesced", "coalesced", "miss"]
    assert rec.value("skyflow_token_cache_lookups_total", cache="coalesced") == 2


async def test_audit_line_per_token_request(
    kind: str,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    rec: Recorded,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with configured(kind, emulator, rec.telemetry, creds) as client:
        with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
            ok = await client.read("creds/producer", entity_id="entity-123")
            missing = await client.read("creds/ghost")
    records = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert [r.getMessage() for r in records] == ["token request", "token request"]
    first, second = (vars(r) for r in records)
    span = rec.spans("SkyflowPlugin.Token.Generate")[0]
    assert first["trace_id"] == f"{span.context.trace_id:032x}"
    assert first["mount"] == "skyflow/insurance"
    assert first["mount_path"] == MOUNT
    assert first["role"] == "producer"
    assert first["outcome"] == "success"
    assert first["cache"] == "miss"
    assert first["entity_id"] == "entity-123"
    assert first["remote_addr"] == "127.0.0.1"
    assert first["upstream_status"] == 200
    assert isinstance(first["duration_ms"], float)
    assert second["outcome"] == "error"
    assert second["error_type"] == "not_found"
    text = caplog.text + repr([vars(r) for r in records])
    secrets = secrets_of(creds, ok.data["access_token"])
    assert not [s for s in secrets if s in text]
    assert missing.status == 400


async def test_audit_line_without_telemetry_keeps_the_callers_trace_id(
    emulator: InProcessEmulator, creds: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with engine("direct", emulator, Telemetry()) as client:
        await configure(client, creds)
        with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
            await client.read(
                "creds/producer", headers=headers(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
            )
    (record,) = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert vars(record)["trace_id"] == TRACE_ID
    assert vars(record)["cache"] == "miss"


@dataclass(frozen=True)
class AuditCase:
    """One token request, as the audit line sees it."""

    mount_point: str = "skyflow/insurance/"
    role: str = "producer"
    operation: str = "read"
    cache: str = "hit"
    ctx: object = None
    entity_id: str = ""
    remote_addr: str = "127.0.0.1"
    headers: tuple[tuple[str, str], ...] = ()
    upstream: tuple[int | None, str] | None = None
    error: str = ""  # "", "raise", "response", "not_found"


# Each case changes one thing of the one before it (or of the first), and each is sent
# twice: a line whose template left one of them out of its key would carry the last one's.
# (The mount's label follows from its path, and the outcome from the error type.)
AUDIT_CASES = [
    AuditCase(),
    AuditCase(cache="miss", upstream=(200, "upstream-1")),
    AuditCase(cache="miss", upstream=(200, "upstream-2")),
    AuditCase(cache="miss", upstream=(200, "")),
    AuditCase(cache="stale"),
    AuditCase(cache=""),
    AuditCase(role="consumer"),
    AuditCase(mount_point="skyflow/lending/"),
    AuditCase(operation="update"),
    AuditCase(entity_id="entity-1"),
    AuditCase(entity_id="entity-2"),
    AuditCase(remote_addr=""),
    AuditCase(remote_addr="10.0.0.7"),
    AuditCase(headers=(("application-source", "billing"),)),
    AuditCase(headers=(("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)),
    AuditCase(ctx={"region": "eu", "case": 1}),
    AuditCase(ctx={"region": "us"}),
    AuditCase(ctx="tenant-7"),
    AuditCase(error="response"),
    AuditCase(error="raise"),
    AuditCase(error="not_found", role="ghost"),
    AuditCase(cache="miss", upstream=(429, "upstream-3"), error="raise"),
    AuditCase(cache="miss", upstream=(503, "upstream-4"), error="raise"),
    AuditCase(cache="miss", upstream=(None, ""), error="raise"),
]


def _audit_fields(scope: OpScope) -> dict[str, object]:
    """What the audit line of a token request says (docs/telemetry.md), but its duration."""
    req = scope.request
    fields: dict[str, object] = {
        "mount": scope.mount,
        "mount_path": req.mount_point,
        "role": scope.role,
        "operation": req.operation,
        "outcome": scope.outcome,
        "cache": scope.cache or "none",
        "trace_id": trace_id_from_traceparent(req),
        "application": scope.application,
        "vault_request_id": req.id,
    }
    optional = {
        "error_type": scope.error_type,
        "upstream_status": scope.upstream_status,
        "upstream_request_id": scope.upstream_request_id,
        "entity_id": req.entity_id,
        "remote_addr": req.remote_addr,
        "ctx_keys": ",".join(sorted(scope.ctx)) if isinstance(scope.ctx, dict) else "",
    }
    fields.update({key: value for key, value in optional.items() if value not in ("", None)})
    return fields


@contextlib.contextmanager
def _audit_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The audit logger as the plugin sets it up (its hclog handler alone, so that lines
    take the template's way), writing into the yielded stream."""
    stream = io.StringIO()
    handler = LoopBatchedHandler(stream)
    handler.setFormatter(HclogFormatter())
    audit = logging.getLogger(AUDIT_LOGGER)
    monkeypatch.setattr(audit, "handlers", [handler])
    monkeypatch.setattr(audit, "propagate", False)
    level = audit.level
    audit.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the level caches
    try:
        yield stream
    finally:
        handler.flush()
        audit.setLevel(level)


async def _audited(telemetry: Telemetry, case: AuditCase, request_id: str) -> OpScope:
    seen: list[OpScope] = []

    async def handler(req: Request, data: FieldData) -> Response | None:
        scope = current_scope()
        assert scope is not None
        seen.append(scope)
        note_cache(case.cache)
        if case.ctx is not None:
            note_ctx(case.ctx)
        if case.upstream is not None:
            scope.note_upstream(*case.upstream, attempts=1)
        if case.error == "raise":
            raise RuntimeError("upstream went away")
        if case.error == "not_found":
            note_error("not_found")
        if case.error:
            return Response.error("no such role")
        return Response(data={"token_type": "Bearer"})

    req = Request(
        operation=case.operation,
        path=f"creds/{case.role}",
        storage=InMemoryStorage(),
        id=request_id,
        mount_point=case.mount_point,
        entity_id=case.entity_id,
        remote_addr=case.remote_addr,
        headers={name: [value] for name, value in case.headers},
        match={"name": case.role},
    )
    with contextlib.suppress(RuntimeError):
        await telemetry.instrument(TOKEN_GENERATE, handler)(req, FieldData({}, {}))
    return seen[0]


async def test_each_audit_line_says_what_its_request_did(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry = Telemetry()
    scopes: list[OpScope] = []
    with _audit_lines(monkeypatch) as stream:
        for index, case in enumerate(AUDIT_CASES * 2):
            scopes.append(await _audited(telemetry, case, f"request-{index}"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == len(scopes)
    for line, scope in zip(lines, scopes, strict=True):
        assert (line.pop("@level"), line.pop("@message")) == ("info", "token request")
        assert (line.pop("@module"), line.pop("@timestamp")[-1]) == (AUDIT_LOGGER, "Z")
        assert list(line) == sorted(line)
        assert isinstance(line.pop("duration_ms"), float)
        assert line == _audit_fields(scope)
    # the second round wrote every line from a template the first one made
    assert len(telemetry._audit_templates.entries) < len(AUDIT_CASES)


async def test_audit_line_templates_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A caller chooses the role name of a request for a role that does not exist.
    telemetry = Telemetry()
    long_name = "r" * (MEMO_MAX_BYTES + 1)
    with _audit_lines(monkeypatch) as stream:
        for index in range(AUDIT_TEMPLATE_LIMIT + 10):
            await _audited(telemetry, AuditCase(role=f"r{index}", error="not_found"), "id")
            assert len(telemetry._audit_templates.entries) <= AUDIT_TEMPLATE_LIMIT
        await _audited(telemetry, AuditCase(role=long_name, error="not_found"), "id")
        for index in range(200):  # short enough each to be remembered, not all of them
            role = f"{index:04d}" + "r" * 3000
            await _audited(telemetry, AuditCase(role=role, error="not_found"), "id")
            assert telemetry._audit_templates.size <= MEMO_BUDGET
        assert 0 < len(telemetry._audit_templates.entries) < 200
    lines = stream.getvalue().splitlines()
    assert json.loads(lines[-201])["role"] == long_name
    assert long_name not in {key[2] for key in telemetry._audit_templates.entries}


async def test_cleanup_flushes_batched_spans(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = OTelTelemetry(
        TelemetrySettings(traces_enabled=True),
        span_processor=BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000),
    )
    try:
        async with configured("grpc", emulator, telemetry, creds) as client:
            assert (await client.read("creds/producer")).status == 200
            assert exporter.get_finished_spans() == ()
        # the mount's Cleanup flushed them
        names = {span.name for span in exporter.get_finished_spans()}
        assert "SkyflowPlugin.Token.Generate" in names
    finally:
        telemetry.shutdown()
    assert telemetry.meter_provider is None


async def test_a_failing_instrument_never_fails_a_request(
    emulator: InProcessEmulator,
    creds: dict[str, str],
    rec: Recorded,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        def add(self, *args: object) -> None:
            raise RuntimeError("instrument bug")

        record = add

    metrics = rec.telemetry._metrics
    assert metrics is not None
    for name in ("tokens_issued", "token_duration", "upstream_calls", "upstream_duration"):
        monkeypatch.setattr(metrics, name, Broken())
    async with configured("direct", emulator, rec.telemetry, creds) as client:
        assert (await client.read("creds/producer")).status == 200
        assert (await client.read("creds/producer")).status == 200


async def test_the_exporting_pipeline_sends_a_cache_hits_span_as_the_sdk_records_it() -> None:
    # The plugin's own pipeline encodes a cache hit's span as it ends (EncodedSpan); an
    # injected processor gets a ReadableSpan. Both must describe the same span.
    async def warm(req: Request, data: Any) -> None:
        scope = current_scope()
        assert scope is not None
        scope.role = "producer"
        note_cache("hit")

    requests = [_request(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01"), _request()]
    for req in requests:
        req.match = {"name": "producer"}
        req.mount_point = "skyflow/insurance/"
    with exporting() as (telemetry, sink), recorded() as rec:
        for observer in (rec.telemetry, telemetry):
            for req in requests:
                await observer.instrument(TOKEN_GENERATE, warm)(req, FieldData({}, {}))
        await telemetry.flush()
        recorded_spans = rec.exporter.get_finished_spans()
        ((path, body),) = sink.payloads
    assert path == "/v1/traces"
    (sent,) = ExportTraceServiceRequest.FromString(body).resource_spans
    expected = encode_spans(recorded_spans).resource_spans[0]
    assert sent.resource == expected.resource
    ((scope, spans),) = [(s.scope, list(s.spans)) for s in sent.scope_spans]
    assert scope == expected.scope_spans[0].scope
    assert len(spans) == 2
    assert spans[0].trace_id.hex() == TRACE_ID
    assert spans[0].parent_span_id.hex() == PARENT_ID
    assert spans[1].parent_span_id == b""
    for ours, theirs in zip(spans, expected.scope_spans[0].spans, strict=True):
        assert ours.start_time_unix_nano <= ours.end_time_unix_nano
        for span in (ours, theirs):
            span.ClearField("span_id")
            span.ClearField("start_time_unix_nano")
            span.ClearField("end_time_unix_nano")
        if not ours.parent_span_id:
            ours.ClearField("trace_id")
            theirs.ClearField("trace_id")
        assert ours == theirs


def _hit(
    cache: str = "hit", ctx: object = None, status: int | None = None, raises: bool = False
) -> Any:
    """A creds handler that answered without an exchange, noting what a real one would."""

    async def handler(req: Request, data: Any) -> Response:
        note_cache(cache)
        if ctx is not None:
            note_ctx(ctx)
        if raises:
            raise SkyflowUnavailable("the token endpoint is down")
        return Response(data={"access_token": "t"}, status=status)

    return handler


# Requests whose spans nothing needs while they run, each a different set of attribute
# values: each is made twice (the second from the template the first left).
_ROOT_SPAN_CASES: list[tuple[dict[str, str], str, str, Any]] = [
    ({}, "producer", "skyflow/insurance/", _hit()),
    ({}, "producer", "skyflow/insurance/", _hit("stale")),
    ({}, "consumer", "skyflow/insurance/", _hit()),
    ({}, "producer", "skyflow/lending/", _hit()),
    ({}, "", "skyflow/insurance/", _hit("")),
    ({"application-source": "checkout"}, "producer", "skyflow/insurance/", _hit()),
    ({}, "producer", "skyflow/insurance/", _hit(ctx={"user": "u-1", "region": "eu"})),
    ({}, "producer", "skyflow/insurance/", _hit(ctx="user-1")),
    ({}, "producer", "skyflow/insurance/", _hit(status=404)),
    ({}, "producer", "skyflow/insurance/", _hit(raises=True)),
]


async def test_root_spans_made_from_templates_are_the_spans_the_sdk_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A cache hit's span is made as bytes from a template (OTelTelemetry._encoded_root); an
    # injected processor gets the SDK's ReadableSpan of the same request. Attribute for
    # attribute, status and all, they must be the same span, and the audit line must name
    # the trace that was exported.
    def requests() -> list[tuple[Request, Any]]:
        made = []
        for headers, role, mount, handler in _ROOT_SPAN_CASES * 2:
            req = _request(**headers)
            req.match = {"name": role} if role else {}
            req.mount_point = mount
            made.append((req, handler))
        return made

    async def serve(observer: OTelTelemetry) -> None:
        for req, handler in requests():
            with contextlib.suppress(SkyflowUnavailable):
                await observer.instrument(TOKEN_GENERATE, handler)(req, FieldData({}, {}))

    with exporting() as (telemetry, sink), recorded() as rec:
        await serve(rec.telemetry)
        with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
            await serve(telemetry)
        await telemetry.flush()
        assert telemetry._templates is not None
        assert len(telemetry._templates.entries) == len(_ROOT_SPAN_CASES)
        recorded_spans = rec.exporter.get_finished_spans()
        ((_, body),) = sink.payloads
    expected = encode_spans(recorded_spans).resource_spans[0].scope_spans[0].spans
    (sent,) = ExportTraceServiceRequest.FromString(body).resource_spans
    spans = list(sent.scope_spans[0].spans)
    assert len(spans) == len(expected) == 2 * len(_ROOT_SPAN_CASES)
    audited = [vars(r)["trace_id"] for r in caplog.records if r.name == AUDIT_LOGGER]
    assert audited == [span.trace_id.hex() for span in spans]
    assert len(set(audited)) == len(spans)
    for ours, theirs in zip(spans, expected, strict=True):
        assert ours.start_time_unix_nano <= ours.end_time_unix_nano
        assert len(ours.trace_id) == 16
        assert len(ours.span_id) == 8
        for span in (ours, theirs):
            for name in ("trace_id", "span_id", "start_time_unix_nano", "end_time_unix_nano"):
                span.ClearField(name)
        assert ours == theirs


def test_span_templates_are_bounded() -> None:
    with exporting() as (telemetry, _):
        assert telemetry._templates is not None

        async def many() -> None:
            for n in range(otel._TEMPLATE_LIMIT + 10):
                req = _request()
                req.match = {"name": f"role-{n}"}
                await telemetry.instrument(TOKEN_GENERATE, _hit())(req, FieldData({}, {}))

        asyncio.run(many())
        assert 0 < len(telemetry._templates.entries) <= otel._TEMPLATE_LIMIT


def test_span_templates_and_attribute_sets_keep_to_their_budget() -> None:
    # Role names of 3 KiB are each short enough to be remembered; two hundred of them are not.
    with exporting() as (telemetry, _):
        templates = telemetry._templates
        assert templates is not None
        sets = otlp_spans._SPAN_ATTRIBUTES._sets

        async def many() -> None:
            for n in range(200):
                req = _request()
                req.match = {"name": f"{n:04d}" + "r" * 3000}
                await telemetry.instrument(TOKEN_GENERATE, _hit())(req, FieldData({}, {}))
                assert templates.size <= MEMO_BUDGET
                assert sets.size <= MEMO_BUDGET

        asyncio.run(many())
        assert 0 < len(templates.entries) < 200


async def test_a_span_the_sampler_records_but_does_not_sample_is_not_exported() -> None:
    # The batch processor exports what the span's context says is sampled: an encoded span
    # must carry its own context's flags, not a stock "sampled" one.
    class RecordOnly(Sampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            return SamplingResult(Decision.RECORD_ONLY, {})

        def get_description(self) -> str:
            return "RecordOnly"

    async def ok(req: Request, data: Any) -> None:
        return None

    req = _request(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")  # the sampler is asked
    req.match = {"name": "producer"}
    with exporting() as (telemetry, sink):
        provider = telemetry.tracer_provider
        assert provider is not None
        provider.sampler = RecordOnly()
        await telemetry.instrument(TOKEN_GENERATE, ok)(req, FieldData({}, {}))
        await telemetry.flush()
        assert sink.payloads == []
        provider.sampler = ParentBased(ALWAYS_ON)
        await telemetry.instrument(TOKEN_GENERATE, ok)(req, FieldData({}, {}))
        await telemetry.flush()
        assert len(sink.payloads) == 1


async def test_a_callers_long_role_name_is_exported_but_not_remembered() -> None:
    # Any caller with a token chooses the role in creds/<role> (a 400 for a name this long
    # still gets its span): a thousand such requests must not stay in the templates.
    role = "r" * 100_000
    req = _request()
    req.match = {"name": role}
    with exporting() as (telemetry, sink):
        await telemetry.instrument(TOKEN_GENERATE, _hit(status=400))(req, FieldData({}, {}))
        await telemetry.flush()
        assert telemetry._templates is not None
        assert telemetry._templates.entries == {}
        remembered = otlp_spans._SPAN_ATTRIBUTES._sets.entries
        assert not [key for key in remembered if any(v == role for _, v in key[0])]
        ((_, body),) = sink.payloads
    (span,) = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
    assert {kv.key: kv.value.string_value for kv in span.attributes}["skyflow.role"] == role


async def test_a_span_the_fast_encoder_refuses_is_exported_through_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> bytes:
        raise Unsupported("a value OTLP cannot carry")

    async def ok(req: Request, data: Any) -> None:
        return None

    monkeypatch.setattr(otel, "encode_span", refuse)
    monkeypatch.setattr(otel, "span_template", refuse)
    req = _request()
    req.match = {"name": "producer"}
    with exporting() as (telemetry, sink):
        await telemetry.instrument(TOKEN_GENERATE, ok)(req, FieldData({}, {}))
        await telemetry.flush()
        ((_, body),) = sink.payloads
    (resource_spans,) = ExportTraceServiceRequest.FromString(body).resource_spans
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "SkyflowPlugin.Token.Generate"


@pytest.mark.parametrize(
    ("rate", "traceparent", "asked"),
    [
        (1.0, None, False),
        (1.0, "00-zz-yy-01", False),  # not a valid parent: a root span
        (1.0, f"00-{TRACE_ID}-{PARENT_ID}-01", True),
        (0.5, None, True),
    ],
    ids=["root", "invalid-parent", "parent", "rate-below-1"],
)
async def test_the_sampler_is_asked_unless_its_answer_is_known(
    monkeypatch: pytest.MonkeyPatch, rate: float, traceparent: str | None, asked: bool
) -> None:
    async def ok(req: Request, data: Any) -> None:
        return None

    with recorded(sample_rate=rate) as rec:
        provider = rec.telemetry.tracer_provider
        assert provider is not None
        ask = provider.sampler.should_sample
        answers: list[Any] = []

        def spy(*args: Any, **kwargs: Any) -> Any:
            answers.append(ask(*args, **kwargs))
            return answers[-1]

        monkeypatch.setattr(provider.sampler, "should_sample", spy)
        req = _request(**({"traceparent": traceparent} if traceparent else {}))
        req.match = {"name": "r"}
        await rec.telemetry.instrument(TOKEN_GENERATE, ok)(req, FieldData({}, {}))
        assert bool(answers) is asked
        if asked:
            return
        # The span is what the sampler's answer would have made it.
        (span,) = rec.spans()
        assert span.context is not None
        answer = ask(None, span.context.trace_id, span.name, SpanKind.SERVER, span.attributes)
        assert answer.decision is Decision.RECORD_AND_SAMPLE
        assert span.context.trace_flags.sampled
        assert dict(answer.attributes) == dict(span.attributes or {})
        assert answer.trace_state is None
        assert not span.context.trace_state
        assert span.parent is None


async def test_flush_never_waits_longer_than_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    class Hanging(InMemorySpanExporter):
        def export(self, spans: Any) -> Any:
            release.wait(10)
            return super().export(spans)

    exporter = Hanging()
    telemetry = OTelTelemetry(
        TelemetrySettings(traces_enabled=True, flush_timeout=0.2),
        span_processor=BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000),
    )
    try:
        req = _request()
        req.match = {"name": "r"}

        async def ok(req: Request, data: Any) -> None:
            return None

        await telemetry.instrument(TOKEN_GENERATE, ok)(req, FieldData({}, {}))
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            await telemetry.flush()
        assert time.monotonic() - started < 1.0
        assert "did not finish" in caplog.text
    finally:
        release.set()
        telemetry.shutdown()
    assert [span.name for span in exporter.get_finished_spans()] == ["SkyflowPlugin.Token.Generate"]


def test_the_process_wide_instance_is_created_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from skyflow_vault_plugin.skyflow.telemetry import factory as telemetry_factory

    monkeypatch.setattr(telemetry_factory, "_process", None)
    monkeypatch.setenv("TELEMETRY_ENABLED", "false")
    first = telemetry_factory.process_telemetry()
    monkeypatch.setenv("TELEMETRY_ENABLED", "true")  # read once: later changes do nothing
    assert telemetry_factory.process_telemetry() is first
    assert not first.enabled
    assert first.settings.disabled_reason == "TELEMETRY_ENABLED=false"
