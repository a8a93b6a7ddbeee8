"""No secret leaks: a full end-to-end run, then every log and export is searched for every
private key and every access token the run handled.

The run: OpenBao at log level debug (the only level at which it logs the plugin's stderr)
with its file audit device on and an OTLP/HTTP receiver in the plugin's environment; config
written with ``credentials_json`` (as text and as an object), with ``credentials_file_path``,
rotated, and refused with real keys inside; roles written; creds read with no ctx, a string
ctx and a map ctx, cached and uncached; every error path (400, 404, 502, 503, an internal
500); health; a plugin reload and a mount disable (Cleanup, which flushes telemetry).

Searched: the server log (with the plugin's stderr), the audit log, everything sent to the
OTLP receiver, and OpenBao's ``sys/metrics``. Needles: each base64 body line of every PEM
used, each access token, and each token's signature part. Expected hits: zero. The audit
log must show request bodies carrying credentials HMAC'd, like response data.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from skyflow_devtools.catalog import reload_plugin
from skyflow_devtools.otlp import OTLPSink, otlp_sink

from .conftest import PLUGIN_NAME, Secrets, Stack, error_text, start_stack

pytestmark = pytest.mark.e2e


# -------------------------------------------------------------------- an OTLP receiver


@pytest.fixture(scope="module")
def otlp() -> Iterator[OTLPSink]:
    with otlp_sink(keep=True) as sink:
        yield sink


# ---------------------------------------------------------------------------- the run


@dataclass
class Run:
    stack: Stack
    secrets: Secrets
    tokens: list[str] = field(default_factory=list)
    config_paths: list[str] = field(default_factory=list)
    creds_paths: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


def _foreign_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, otlp: OTLPSink) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("leaks")
    env = {
        # the telemetry issue's switches, and the standard OTLP exporter settings
        "TELEMETRY_ENABLED": "true",
        "TELEMETRY_METRICS_EXPORT_INTERVAL": "1s",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with start_stack(work, server_env=env, audit_log=True) as stack:
        yield _full_run(stack, work)


def _full_run(stack: Stack, work: Path) -> Run:
    root = stack.client()
    found = Secrets()
    result = Run(stack, found)

    def note(label: str, response: Any) -> Any:
        result.statuses[label] = response.status_code
        if response.status_code == 200:
            data = (response.json() or {}).get("data") or {}
            token = data.get("access_token")
            if isinstance(token, str):
                found.add_token(f"{label} #{len(result.tokens)}", token)
                result.tokens.append(token)
        return response

    accounts = {name: stack.new_account() for name in ("text", "object", "file", "rotated")}
    for name, account in accounts.items():
        found.add_key(f"account {name}", account["privateKey"])
    foreign = _foreign_key_pem()
    found.add_key("a key Skyflow does not know", foreign)

    # config: as JSON text, as an object, from a file, then rotated
    by_text = stack.mount("skyflow/text", credentials=accounts["text"])
    by_object = f"{by_text}-object"
    root.enable_secrets(by_object, PLUGIN_NAME)
    note(
        "config object",
        root.request("POST", f"{by_object}/config", json={"credentials_json": accounts["object"]}),
    )
    by_file = f"{by_text}-file"
    creds_file = stack.credentials_dir / by_file / "file-account.json"  # the mount's own dir
    creds_file.parent.mkdir(parents=True)
    creds_file.write_text(json.dumps(accounts["file"]))
    os.chmod(creds_file, 0o600)
    root.enable_secrets(by_file, PLUGIN_NAME)
    note(
        "config file",
        root.request("POST", f"{by_file}/config", json={"credentials_file_path": str(creds_file)}),
    )
    mounts = [by_text, by_object, by_file]
    result.config_paths = [f"{m}/config" for m in mounts]

    # refused config writes that carry real keys
    bad_uri = {**accounts["rotated"], "tokenURI": "http://insecure.example/token"}
    note(
        "config bad uri",
        root.request("POST", f"{by_text}/config", json={"credentials_json": json.dumps(bad_uri)}),
    )
    unknown = {**accounts["rotated"], "privateKey": foreign}
    note(
        "config unknown key",
        root.request("POST", f"{by_text}/config", json={"credentials_json": unknown}),
    )
    note(
        "config key + unknown field",
        root.request(
            "POST",
            f"{by_text}/config",
            json={"credentials_json": accounts["rotated"], "pem": foreign},
        ),
    )
    note(
        "config key + NUL path (internal error)",
        root.request(
            "POST",
            f"{by_text}/config",
            json={"credentials_file_path": "/tmp/x\x00" + foreign.splitlines()[1]},
        ),
    )
    note(
        "rotate",
        root.request(
            "POST", f"{by_text}/config", json={"credentials_json": json.dumps(accounts["rotated"])}
        ),
    )

    # roles and creds
    for mount in mounts:
        root.write(f"{mount}/roles/producer", {"role_ids": ["producer"]})
        root.write(f"{mount}/roles/nocache", {"role_ids": ["auditor"], "cache_tokens": False})
        root.write(
            f"{mount}/roles/restricted",
            {"role_ids": ["r"], "ctx_mode": "restricted", "allowed_ctx_keys": ["user"]},
        )
        result.creds_paths.append(f"{mount}/creds/producer")
        for _ in range(2):
            note("creds", root.request("GET", f"{mount}/creds/producer"))
            note(
                "creds string ctx",
                root.request("GET", f"{mount}/creds/producer", params={"ctx": "user-42"}),
            )
            note(
                "creds map ctx",
                root.request(
                    "POST", f"{mount}/creds/producer", json={"ctx": {"user": "u42", "tier": 1}}
                ),
            )
            note("creds uncached", root.request("GET", f"{mount}/creds/nocache"))
        note(
            "creds restricted",
            root.request("POST", f"{mount}/creds/restricted", json={"ctx": {"user": "u1"}}),
        )
        note(
            "creds restricted bad key",
            root.request("POST", f"{mount}/creds/restricted", json={"ctx": {"admin": True}}),
        )
        note("creds unknown role", root.request("GET", f"{mount}/creds/nobody"))
        note("health", root.request("GET", f"{mount}/health"))
        note("config read", root.request("GET", f"{mount}/config"))

    # upstream errors
    stack.admin.set_faults(reject=True)
    note("creds rejected", root.request("GET", f"{by_text}/creds/nocache"))
    # a mount whose probe token is too short-lived to answer for health (under 60 s)
    stack.admin.reset()
    stack.admin.set_token_lifetime(30)
    short_lived = stack.mount("skyflow/short", credentials=accounts["object"])
    stack.admin.set_token_lifetime(3600)
    stack.admin.set_faults(fail_status=503)
    note("creds unavailable", root.request("GET", f"{by_text}/creds/nocache"))
    note("health unavailable", root.request("GET", f"{short_lived}/health"))
    stack.admin.reset()
    note("creds after the outage", root.request("GET", f"{by_text}/creds/nocache"))

    # Cleanup: reload every mount of the plugin, disable one (telemetry flushes on Cleanup)
    reload_plugin(stack.bao, PLUGIN_NAME)
    note("creds after reload", root.request("GET", f"{by_object}/creds/producer"))
    root.disable_secrets(by_file)
    time.sleep(2.0)  # metric export interval, batch span delay
    return result


# -------------------------------------------------------------------------- the checks


def test_the_run_did_what_it_claims(run: Run) -> None:
    """Guard against a vacuous pass: every path was exercised with the expected outcome."""
    expected = {
        "config object": 200,
        "config file": 200,
        "config bad uri": 400,
        "config unknown key": 400,
        "config key + unknown field": 400,
        "rotate": 200,
        "creds": 200,
        "creds string ctx": 200,
        "creds map ctx": 200,
        "creds uncached": 200,
        "creds restricted": 200,
        "creds restricted bad key": 400,
        "creds unknown role": 400,
        "health": 200,
        "config read": 200,
        "creds rejected": 502,
        "creds unavailable": 503,
        "health unavailable": 503,
        "creds after the outage": 200,
        "creds after reload": 200,
    }
    assert {k: run.statuses.get(k) for k in expected} == expected
    assert len(run.tokens) >= 20
    assert len(run.secrets.needles) > 100


def test_responses_never_return_a_key(run: Run) -> None:
    root = run.stack.client()
    for path in run.config_paths[:2]:
        assert run.secrets.found_in(root.request("GET", path).text) == []


def test_server_log_has_no_secret(run: Run) -> None:
    log = run.stack.bao.log_path.read_bytes()
    # the plugin's own log records (its stderr, relayed at debug level) are in there
    assert b"@module=" in log, "plugin stderr is not in the server log"
    assert run.secrets.found_in(log) == []


def test_audit_log_has_no_secret(run: Run) -> None:
    path = run.stack.bao.audit_log_path
    assert path is not None
    audit = path.read_bytes()
    assert audit.count(b"\n") > 50, "the audit device logged next to nothing"
    assert run.secrets.found_in(audit) == []


def test_audit_log_hmacs_credentials_in_requests_and_tokens_in_responses(run: Run) -> None:
    path = run.stack.bao.audit_log_path
    assert path is not None
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    config_writes = [
        e
        for e in entries
        if e.get("type") == "request"
        and e["request"].get("path") in run.config_paths
        and e["request"].get("operation") in ("create", "update")
        and "credentials_json" in (e["request"].get("data") or {})
    ]
    assert config_writes, "no audited config write with credentials_json"

    def all_strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from all_strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from all_strings(item)

    for entry in config_writes:
        for text in all_strings(entry["request"]["data"]["credentials_json"]):
            assert text.startswith("hmac-sha256:"), "credentials_json is not HMAC'd"
    creds_responses = [
        e
        for e in entries
        if e.get("type") == "response"
        and e["request"].get("path") in run.creds_paths
        and "access_token" in ((e.get("response") or {}).get("data") or {})
    ]
    assert creds_responses
    for entry in creds_responses:
        assert entry["response"]["data"]["access_token"].startswith("hmac-sha256:")


def test_telemetry_has_no_secret(run: Run, otlp: OTLPSink) -> None:
    """Whatever the plugin exported over OTLP (nothing while telemetry is not built in)."""
    exported = b"".join(body for _, body in otlp.payloads)
    print(f"\nOTLP payloads received: {len(otlp.payloads)} ({len(exported)} bytes)")
    if otlp.payloads:  # not vacuous: the exports describe this run's mounts
        assert b"skyflow/text" in exported
    assert run.secrets.found_in(exported) == []


def test_openbao_metrics_have_no_secret(run: Run) -> None:
    response = run.stack.client().request("GET", "sys/metrics")
    assert response.status_code == 200, error_text(response)
    assert run.secrets.found_in(response.text) == []
