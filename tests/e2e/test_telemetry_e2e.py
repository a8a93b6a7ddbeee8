"""Telemetry of the plugin running inside a real OpenBao, received by a real OTLP/HTTP
receiver started by the test.

The receiver is a small HTTP server on 127.0.0.1 that decodes ``ExportTraceServiceRequest``
and ``ExportMetricsServiceRequest`` protobufs (``opentelemetry-proto``) and keeps every raw
payload, so that no secret can hide in a field the decoding would skip. Three catalog
entries of the plugin run side by side, each with its own receiver: one exporting (the
registration is done with the ``bao`` CLI, as docs/telemetry.md shows), one with ``ENV=dev``
and one with ``TELEMETRY_ENABLED=false``. Issue 5's "done when":

* token, config and role operations arrive as spans with their names and attributes,
  parented to the caller's ``traceparent`` (the mount passes it through);
* the metrics arrive with their values;
* ``ENV=dev`` and ``TELEMETRY_ENABLED=false`` send nothing;
* no secret (a line of the private key, an issued access token, a ctx value) appears in
  any exported payload.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from skyflow_devtools.catalog import python_launcher, write_plugin_executable
from skyflow_devtools.client import BaoClient

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = pytest.mark.e2e

MOUNT = "skyflow/insurance"
TRACE_ID = secrets.token_hex(16)
PARENT_SPAN_ID = secrets.token_hex(8)
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
APPLICATION = "claims-portal"
CTX_SECRET = f"ssn-{secrets.token_hex(6)}"
WAIT = 20.0  # seconds to wait for an export; the plugin exports every ~0.2-0.5 s
QUIET = 2.5  # seconds a switched-off plugin must stay silent after its last request
FAST_EXPORT = {
    "TELEMETRY_METRICS_EXPORT_INTERVAL": "500ms",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
}

_T = TypeVar("_T")


# -- the receiver --------------------------------------------------------------------------


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind is None:
        return None
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True)
class Span:
    """One received span, decoded."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    resource: dict[str, Any]


@dataclass
class OTLPReceiver:
    """An OTLP/HTTP (protobuf) receiver on 127.0.0.1 that keeps what it is sent."""

    raw: list[bytes] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    points: dict[tuple[str, frozenset[tuple[str, Any]]], float] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                reply = receiver.accept(self.path, body)
                self.send_response(200 if reply is not None else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply or b"")))
                self.end_headers()
                self.wfile.write(reply or b"")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> OTLPReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accept(self, path: str, body: bytes) -> bytes | None:
        with self.lock:
            self.raw.append(body)
            self.paths.append(path)
            if path == "/v1/traces":
                self._traces(ExportTraceServiceRequest.FromString(body))
                return ExportTraceServiceResponse().SerializeToString()
            if path == "/v1/metrics":
                self._metrics(ExportMetricsServiceRequest.FromString(body))
                return ExportMetricsServiceResponse().SerializeToString()
        return None

    def _traces(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes=_attributes(span.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                            status_code=span.status.code,
                            resource=resource,
                        )
                    )

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        # Cumulative temporality: the latest export of a point holds its total.
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    if kind == "sum":
                        for number in metric.sum.data_points:
                            value = number.as_int if number.HasField("as_int") else number.as_double
                            self._point(metric.name, number.attributes, float(value))
                    elif kind == "histogram":
                        for histogram in metric.histogram.data_points:
                            self._point(metric.name, histogram.attributes, float(histogram.count))

    def _point(self, name: str, attributes: Any, value: float) -> None:
        key = (name, frozenset(_attributes(attributes).items()))
        self.points[key] = value

    # -- queries -----------------------------------------------------------------------

    def received_spans(self, name: str | None = None) -> list[Span]:
        with self.lock:
            return [span for span in self.spans if name is None or span.name == name]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the latest values of ``name``'s points whose labels include ``labels``."""
        with self.lock:
            return sum(
                value
                for (metric, attributes), value in self.points.items()
                if metric == name and labels.items() <= dict(attributes).items()
            )

    def payloads(self) -> list[bytes]:
        with self.lock:
            return list(self.raw)


def wait_for(predicate: Callable[[], _T | None], what: str, timeout: float = WAIT) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not received within {timeout:.0f} s")
        time.sleep(0.1)


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class Receivers:
    on: OTLPReceiver
    dev: OTLPReceiver
    off: OTLPReceiver


@dataclass
class Traffic:
    """What the module's requests produced (tokens only to look for them in payloads)."""

    credentials: dict[str, str]
    tokens: list[str]
    finished_at: float


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    started = Receivers(OTLPReceiver().start(), OTLPReceiver().start(), OTLPReceiver().start())
    try:
        yield started
    finally:
        for receiver in (started.on, started.dev, started.off):
            receiver.stop()


def register(stack: SkyflowStack, name: str, env: dict[str, str]) -> None:
    """Copy the plugin into plugin_directory and register it with ``bao write``, as an
    operator does (``bao plugin register`` has no -env flag in OpenBao 2.7)."""
    _, sha256 = write_plugin_executable(
        stack.bao.plugin_dir, name, python_launcher("skyflow_vault_plugin.cli")
    )
    args = [f"env={key}={value}" for key, value in env.items()]
    stack.bao.cli(
        "write",
        f"sys/plugins/catalog/secret/{name}",
        f"sha256={sha256}",
        f"command={name}",
        *args,
        check=True,
    )


@pytest.fixture(scope="module")
def traffic(stack: SkyflowStack, receivers: Receivers) -> Traffic:
    """Register the three plugins, mount them, and send each the same requests."""
    register(
        stack,
        "skyflow-otel",
        {"ENV": "uat", "OTEL_EXPORTER_OTLP_ENDPOINT": receivers.on.endpoint, **FAST_EXPORT},
    )
    register(
        stack,
        "skyflow-dev",
        {
            "ENV": "dev",
            "TELEMETRY_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receivers.dev.endpoint,
            **FAST_EXPORT,
        },
    )
    register(
        stack,
        "skyflow-off",
        {
            "TELEMETRY_ENABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receivers.off.endpoint,
            **FAST_EXPORT,
        },
    )
    client = stack.client()
    credentials = stack.new_account()
    tokens: list[str] = []
    for plugin, path in (
        ("skyflow-otel", MOUNT),
        ("skyflow-dev", "skyflow/dev"),
        ("skyflow-off", "skyflow/off"),
    ):
        client.enable_secrets(path, plugin)
        # The command docs/telemetry.md gives, run as written.
        stack.bao.cli(
            "secrets",
            "tune",
            "-passthrough-request-headers=traceparent",
            "-passthrough-request-headers=Application-Source",
            path,
            check=True,
        )
        tokens.extend(exercise(client, path, credentials))
    client.disable_secrets("skyflow/dev")  # Cleanup: a plugin that exported would flush now
    client.disable_secrets("skyflow/off")
    return Traffic(credentials, tokens, time.monotonic())


def exercise(client: BaoClient, path: str, credentials: dict[str, str]) -> list[str]:
    """Config, roles, tokens (miss, hit, with ctx), health and two failures."""
    client.write(f"{path}/config", {"credentials_json": json.dumps(credentials)})
    client.write(f"{path}/roles/producer", {"role_ids": ["p-1", "p-2"]})
    client.read(f"{path}/roles/producer")
    client.list(f"{path}/roles")
    client.read(f"{path}/config")
    passed = {"traceparent": TRACEPARENT, "Application-Source": APPLICATION}
    tokens = []
    for _ in range(2):
        response = client.request("GET", f"{path}/creds/producer", headers=passed)
        assert response.status_code == 200, response.text[:200]
        tokens.append(response.json()["data"]["access_token"])
    with_ctx = client.request(
        "POST", f"{path}/creds/producer", json={"ctx": {"user_id": CTX_SECRET, "branch": "nyc"}}
    )
    assert with_ctx.status_code == 200, with_ctx.text[:200]
    tokens.append(with_ctx.json()["data"]["access_token"])
    assert client.request("GET", f"{path}/creds/ghost").status_code == 400
    assert client.request("GET", f"{path}/health").status_code == 200
    client.write(f"{path}/roles/scratch", {"role_ids": ["s-1"]})
    client.delete(f"{path}/roles/scratch")
    return tokens


# -- tests -----------------------------------------------------------------------------------


def test_the_mount_passes_the_headers_through(stack: SkyflowStack, traffic: Traffic) -> None:
    tune = stack.client().read(f"sys/mounts/{MOUNT}/tune")
    passed = [h.lower() for h in tune["data"]["passthrough_request_headers"]]
    assert passed == ["traceparent", "application-source"]


def test_spans_arrive_parented_to_the_incoming_traceparent(
    receivers: Receivers, traffic: Traffic
) -> None:
    on = receivers.on

    def tokens_of_the_trace() -> list[Span] | None:
        found = on.received_spans("SkyflowPlugin.Token.Generate")
        traced = [span for span in found if span.trace_id == TRACE_ID]
        return traced if len(traced) == 2 else None

    miss, hit = sorted(
        wait_for(tokens_of_the_trace, "Token.Generate spans of the caller's trace"),
        key=lambda s: str(s.attributes["skyflow.cache"]),
        reverse=True,
    )
    for span in (miss, hit):
        assert span.parent_span_id == PARENT_SPAN_ID
        assert span.attributes["skyflow.mount"] == "skyflow/insurance"
        assert span.attributes["skyflow.mount_path"] == "skyflow/insurance/"
        assert span.attributes["skyflow.role"] == "producer"
        assert span.attributes["skyflow.operation"] == "read"
        assert span.attributes["skyflow.outcome"] == "success"
        assert span.attributes["skyflow.application"] == APPLICATION
        assert span.resource["service.name"] == "skyflow-vault-plugin"
        assert span.resource["deployment.environment.name"] == "uat"
    assert miss.attributes["skyflow.cache"] == "miss"
    assert hit.attributes["skyflow.cache"] == "hit"
    assert miss.attributes["skyflow.upstream.status"] == 200
    assert miss.attributes["skyflow.upstream.request_id"]

    auths = wait_for(
        lambda: [s for s in on.received_spans("SkyflowPlugin.SDK.Auth") if s.trace_id == TRACE_ID],
        "the SDK.Auth span",
    )
    assert [a.parent_span_id for a in auths] == [miss.span_id]
    assert auths[0].attributes["http.response.status_code"] == 200

    expected = {
        "SkyflowPlugin.Config.Write": 1,
        "SkyflowPlugin.Config.Read": 1,
        "SkyflowPlugin.Role.Write": 2,
        "SkyflowPlugin.Role.Read": 1,
        "SkyflowPlugin.Role.List": 1,
        "SkyflowPlugin.Role.Delete": 1,
        "SkyflowPlugin.Health.Check": 1,
        "SkyflowPlugin.Token.Generate": 4,
    }

    def all_names() -> dict[str, int] | None:
        names = [span.name for span in on.received_spans()]
        counts = {name: names.count(name) for name in expected}
        return counts if counts == expected else None

    wait_for(all_names, "every operation's span")
    ghost = next(
        s
        for s in on.received_spans("SkyflowPlugin.Token.Generate")
        if s.attributes.get("skyflow.role") == "ghost"
    )
    assert ghost.attributes["error.type"] == "not_found"
    assert ghost.status_code == 2  # STATUS_CODE_ERROR
    with_ctx = next(
        s
        for s in on.received_spans("SkyflowPlugin.Token.Generate")
        if s.attributes.get("skyflow.ctx.type") == "map"
    )
    assert with_ctx.attributes["skyflow.ctx.keys"] == ["branch", "user_id"]
    write = on.received_spans("SkyflowPlugin.Config.Write")[0]
    assert write.attributes["skyflow.operation"] == "create"
    assert any(
        a.parent_span_id == write.span_id for a in on.received_spans("SkyflowPlugin.SDK.Auth")
    )


def test_metrics_arrive_with_their_values(receivers: Receivers, traffic: Traffic) -> None:
    on = receivers.on
    labels = {"mount": "skyflow/insurance", "role": "producer"}
    wait_for(
        lambda: (
            on.metric("skyflow_total_tokens_generated", **labels) == 3
            and on.metric("skyflow_role_operations_total", operation="delete") == 1
        ),
        "the token and role counters",
    )
    assert on.metric("skyflow_total_tokens_generated", **labels, cache="hit") == 1
    assert on.metric("skyflow_total_tokens_generated", **labels, application=APPLICATION) == 2
    assert on.metric("skyflow_total_tokens_generated", **labels, application="none") == 1
    assert on.metric("skyflow_total_tokens_failed", role="_unknown", error_type="not_found") == 1
    assert on.metric("skyflow_token_generated_duration_ms", mount="skyflow/insurance") == 4
    assert on.metric("skyflow_token_cache_lookups_total", **labels, cache="miss") == 2
    assert on.metric("skyflow_token_cache_lookups_total", **labels, cache="hit") == 1
    # the config's validation and the two misses reach Skyflow (health reuses the
    # validation's token)
    assert on.metric("skyflow_sdk_call_total", mount="skyflow/insurance", status="200") == 3
    assert on.metric("skyflow_sdk_call_duration_ms", mount="skyflow/insurance") == 3
    assert on.metric("skyflow_config_operations_total", operation="create", outcome="success") == 1
    assert on.metric("skyflow_config_operations_total", operation="read") == 1
    assert on.metric("skyflow_role_operations_total", operation="create") == 2
    assert on.metric("skyflow_role_operations_total", operation="list") == 1
    assert (
        on.metric("skyflow_health_checks_total", mount="skyflow/insurance", outcome="success") == 1
    )


def test_dev_and_disabled_send_nothing(receivers: Receivers, traffic: Traffic) -> None:
    time.sleep(max(0.0, traffic.finished_at + QUIET - time.monotonic()))
    assert receivers.dev.payloads() == []
    assert receivers.off.payloads() == []
    # while the exporting plugin, given the same requests, did send
    assert receivers.on.payloads()


def test_no_secret_in_any_exported_payload(
    stack: SkyflowStack, receivers: Receivers, traffic: Traffic
) -> None:
    wait_for(
        lambda: len(receivers.on.received_spans("SkyflowPlugin.Role.Delete")) == 1,
        "the last span",
    )
    key_lines = [
        line.strip()
        for line in traffic.credentials["privateKey"].splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    assert len(key_lines) > 10
    signatures = [token.rsplit(".", 1)[-1] for token in traffic.tokens]
    needles = [*key_lines, *traffic.tokens, *signatures, CTX_SECRET]
    payloads = receivers.on.payloads()
    assert len(payloads) > 2
    leaks = sum(1 for payload in payloads for needle in needles if needle.encode() in payload)
    assert leaks == 0  # a count, so that no secret is printed

    # The audit line went to the host's log, with the caller's trace and without secrets
    # (info lines leave the plugin within a short batching window: wait for them).
    def audit_lines() -> list[str]:
        log = stack.bao.log_path.read_text(errors="replace")
        return [line for line in log.splitlines() if "token request" in line and TRACE_ID in line]

    wait_for(lambda: len(audit_lines()) >= 2, "the audit lines")
    audit = audit_lines()
    log = stack.bao.log_path.read_text(errors="replace")
    assert "mount=skyflow/insurance" in audit[0]
    assert sum(1 for needle in needles if needle in log) == 0
