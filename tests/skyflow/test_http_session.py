"""The OTLP exporters' session reads the environment once per URL, with requests' answers."""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.sessions

from skyflow_vault_plugin.skyflow.telemetry import http_session
from skyflow_vault_plugin.skyflow.telemetry.http_session import (
    METRICS_CREDENTIAL_PROVIDER,
    TRACES_CREDENTIAL_PROVIDER,
    CachedEnvironmentSession,
    exporter_session,
)
from skyflow_vault_plugin.skyflow.telemetry.names import TOKEN_GENERATE
from skyflow_vault_plugin.skyflow.telemetry.otel import OTelTelemetry
from skyflow_vault_plugin.skyflow.telemetry.settings import TelemetrySettings
from vault_plugin_sdk.framework import FieldData, Request
from vault_plugin_sdk.testing import InMemoryStorage

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy, CA bundle or netrc from the machine running the tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))


class Received:
    """What a local HTTP server was sent: each request's line and Authorization header."""

    def __init__(self) -> None:
        self.port = 0
        self.lines: list[str] = []
        self.authorizations: list[str | None] = []


@contextlib.contextmanager
def receiver() -> Iterator[Received]:
    """An HTTP server on 127.0.0.1 answering 200 to every POST, keeping what it was sent.
    As a proxy it sees the request line in absolute form."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.lines.append(self.requestline)
            received.authorizations.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str, calls: list[str]) -> None:
    """Count the calls of ``module.name`` in ``calls``, still calling it."""
    original: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every proxy and netrc lookup requests makes from here on, by name."""
    calls: list[str] = []
    counting(monkeypatch, requests.sessions, "get_environ_proxies", calls)
    counting(monkeypatch, requests.sessions, "get_netrc_auth", calls)
    counting(monkeypatch, http_session, "get_netrc_auth", calls)
    return calls


URL = "http://127.0.0.1:4318/v1/traces"

ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"HTTP_PROXY": "http://127.0.0.1:3128"},
    {"http_proxy": "http://127.0.0.1:3128", "no_proxy": "127.0.0.1"},
    {"HTTPS_PROXY": "http://127.0.0.1:3128", "ALL_PROXY": "http://127.0.0.1:3129"},
    {"REQUESTS_CA_BUNDLE": "/etc/ssl/certs/corporate.pem"},
    {"CURL_CA_BUNDLE": "/etc/ssl/certs/curl.pem", "HTTP_PROXY": "http://127.0.0.1:3128"},
]


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=lambda env: ",".join(env) or "none")
@pytest.mark.parametrize("session_verify", [True, "/etc/otel/ca.pem"])
def test_settings_are_those_of_a_plain_session(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], session_verify: bool | str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    plain, cached = requests.Session(), CachedEnvironmentSession()
    for session in (plain, cached):
        session.verify = session_verify  # as the OTLP exporter's transport sets it
    for url in (URL, "https://127.0.0.1:4318/v1/metrics"):
        expected = plain.merge_environment_settings(url, {}, None, None, None)
        for _ in range(2):  # the first answer and the remembered one
            assert cached.merge_environment_settings(url, {}, None, None, None) == expected


def test_a_changed_session_setting_is_not_answered_from_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    session = CachedEnvironmentSession()
    assert session.merge_environment_settings(URL, {}, None, None, None)["verify"] is True
    session.verify = "/etc/otel/ca.pem"
    session.proxies = {"http": "http://127.0.0.1:3130"}
    settings = session.merge_environment_settings(URL, {}, None, None, None)
    assert settings["verify"] == "/etc/otel/ca.pem"
    assert settings["proxies"]["http"] == "http://127.0.0.1:3128"  # the environment's wins


def test_a_caller_changing_its_settings_leaves_the_memory_as_it_was() -> None:
    session = CachedEnvironmentSession()
    session.merge_environment_settings(URL, {}, None, None, None)["proxies"]["http"] = "x"
    assert session.merge_environment_settings(URL, {}, None, None, None)["proxies"] == {}


def post(session: requests.Session, url: str, times: int) -> None:
    for _ in range(times):
        response = session.post(url, data=b"spans", timeout=5)
        assert response.status_code == 200


def test_the_environment_is_read_once_per_url(lookups: list[str]) -> None:
    with receiver() as server:
        url = f"http://127.0.0.1:{server.port}/v1/traces"
        post(CachedEnvironmentSession(), url, 5)
        assert sorted(lookups) == ["get_environ_proxies", "get_netrc_auth"]
        lookups.clear()
        post(requests.Session(), url, 5)  # what it replaces: both, on every request
        assert sorted(lookups) == ["get_environ_proxies"] * 5 + ["get_netrc_auth"] * 5


def test_the_environments_proxy_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with receiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        target = "http://127.0.0.1:9/v1/traces"  # reached through the proxy only
        post(CachedEnvironmentSession(), target, 2)
        assert proxy.lines == [f"POST {target} HTTP/1.1"] * 2


def test_no_proxy_still_bypasses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with receiver() as server:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        post(CachedEnvironmentSession(), f"http://127.0.0.1:{server.port}/v1/traces", 2)
        assert server.lines == ["POST /v1/traces HTTP/1.1"] * 2


@pytest.fixture
def netrc_basic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A netrc file with credentials for 127.0.0.1 (``NETRC``); the Authorization header
    they make."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login collector password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    return "Basic " + base64.b64encode(b"collector:from-netrc").decode()


def test_netrc_credentials_are_sent_on_every_request(netrc_basic: str) -> None:
    with receiver() as server:
        post(CachedEnvironmentSession(), f"http://127.0.0.1:{server.port}/v1/traces", 2)
    assert server.authorizations == [netrc_basic, netrc_basic]


def test_the_callers_request_is_left_as_it_came(netrc_basic: str) -> None:
    request = requests.Request("POST", URL, data=b"spans")
    prepared = CachedEnvironmentSession().prepare_request(request)
    assert prepared.headers["Authorization"] == netrc_basic
    assert request.auth is None


def test_without_a_netrc_entry_no_credentials_are_sent() -> None:
    with receiver() as server:
        post(CachedEnvironmentSession(), f"http://127.0.0.1:{server.port}/v1/traces", 2)
    assert server.authorizations == [None, None]


def test_a_credential_provider_keeps_the_exporters_own_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(exporter_session(TRACES_CREDENTIAL_PROVIDER), CachedEnvironmentSession)
    for name in (TRACES_CREDENTIAL_PROVIDER, "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER"):
        with monkeypatch.context() as env:
            env.setenv(name, "gcp")
            assert exporter_session(TRACES_CREDENTIAL_PROVIDER) is None
    monkeypatch.setenv(METRICS_CREDENTIAL_PROVIDER, "gcp")
    assert exporter_session(TRACES_CREDENTIAL_PROVIDER) is not None
    assert exporter_session(METRICS_CREDENTIAL_PROVIDER) is None


async def test_the_plugins_exporters_read_the_environment_once(lookups: list[str]) -> None:
    async def handler(req: Request, data: FieldData) -> None:
        return None

    with receiver() as server:
        endpoint = f"http://127.0.0.1:{server.port}"
        telemetry = OTelTelemetry(
            TelemetrySettings(
                traces_enabled=True,
                traces_endpoint=f"{endpoint}/v1/traces",
                metrics_enabled=True,
                metrics_endpoint=f"{endpoint}/v1/metrics",
            )
        )
        try:
            instrumented = telemetry.instrument(TOKEN_GENERATE, handler)
            for _ in range(3):
                request = Request(operation="read", path="creds/x", storage=InMemoryStorage())
                await instrumented(request, FieldData({}, {}))
                await telemetry.flush()
        finally:
            telemetry.shutdown()
    assert server.lines.count("POST /v1/traces HTTP/1.1") == 3
    assert server.lines.count("POST /v1/metrics HTTP/1.1") >= 3  # and one more at shutdown
    # Once for each of the two URLs, not once per export.
    assert sorted(lookups) == ["get_environ_proxies"] * 2 + ["get_netrc_auth"] * 2
