"""``health``: storage, config and Skyflow checks, through both drivers."""

from __future__ import annotations

import dataclasses
import time

import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults
from skyflow_vault_plugin.skyflow import client as client_module
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.mount import PLUGIN_VERSION
from skyflow_vault_plugin.skyflow.responses import MAX_MOUNT_BACKOFF
from tests.skyflow import conftest
from vault_plugin_sdk.testing import PluginTestClient

POLICY = dataclasses.replace(conftest.POLICY, max_attempts=2)
MOUNT_POINT = "skyflow/clcm/"
pytestmark = pytest.mark.usefixtures("fresh_emulator")

EMULATOR_HOSTS = TokenHosts.parse("emulator.test")  # the in-process emulator's host


async def test_healthy(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    outcome = await client.read("health")
    assert outcome.status == 200
    assert outcome.data["healthy"] is True
    checks = outcome.data["checks"]
    assert set(checks) == {"storage", "config", "skyflow"}
    assert all(check["ok"] for check in checks.values())
    assert checks["config"]["client_id"] == creds["clientID"]
    assert checks["config"]["version"] == 1
    assert outcome.data["version"] == PLUGIN_VERSION
    assert outcome.data["mount"] == "skyflow/clcm/"
    assert outcome.data["timestamp"].endswith("Z")
    assert emulator.state.token_calls == 1
    assert emulator.state.requests[-1].client_id == creds["clientID"]


async def test_reuses_a_cached_token(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    first = await client.read("health")
    assert first.data["checks"]["skyflow"]["cached"] is False
    for _ in range(3):
        again = await client.read("health")
        assert again.status == 200
        assert again.data["checks"]["skyflow"]["cached"] is True
    assert emulator.state.token_calls == 1


async def test_reuses_the_validation_token_of_a_config_write(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds})
    assert emulator.state.token_calls == 1
    outcome = await client.read("health")
    assert outcome.status == 200
    assert outcome.data["checks"]["skyflow"]["cached"] is True
    assert emulator.state.token_calls == 1


async def test_a_token_about_to_expire_is_not_reused(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    emulator.state.token_lifetime = 30  # below the minute a probe token must stay valid
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    await client.read("health")
    await client.read("health")
    assert emulator.state.token_calls == 2


async def test_unconfigured_is_503_with_the_config_check_failing(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    outcome = await client.read("health")
    assert outcome.status == 503
    assert outcome.data["healthy"] is False
    checks = outcome.data["checks"]
    assert checks["storage"]["ok"] is True
    assert checks["config"]["ok"] is False
    assert "config" in checks["config"]["message"]
    assert checks["skyflow"]["ok"] is False
    assert emulator.state.token_calls == 0


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_skyflow_failing_is_503_with_its_status(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    status: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    emulator.state.set_faults(Faults(fail_status=status))
    outcome = await client.read("health")
    assert outcome.status == 503
    assert outcome.data["healthy"] is False
    checks = outcome.data["checks"]
    assert checks["config"]["ok"] is True
    assert checks["skyflow"]["ok"] is False
    assert checks["skyflow"]["status"] == status
    # and it recovers, minting once
    emulator.state.reset_faults()
    emulator.state.reset_stats()
    if status == 429:
        # a 429 pauses the whole mount: nothing goes to Skyflow until the pause ends
        paused = await client.read("health")
        assert paused.status == 503
        assert "rate limited" in paused.data["checks"]["skyflow"]["message"]
        assert emulator.state.token_calls == 0
        later = time.monotonic() + MAX_MOUNT_BACKOFF
        monkeypatch.setattr(client_module, "_pause_clock", lambda: later)
    assert (await client.read("health")).status == 200
    assert emulator.state.token_calls == 1


async def test_skyflow_rejecting_is_503_with_401(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    emulator.state.set_faults(Faults(reject=True))
    outcome = await client.read("health")
    assert outcome.status == 503
    skyflow = outcome.data["checks"]["skyflow"]
    assert skyflow["ok"] is False
    assert skyflow["status"] == 401
    assert "rejected" in skyflow["message"]
    assert "Invalid credentials" not in skyflow["message"]  # Skyflow's text: the log only


async def test_config_change_drops_the_probe_token(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    await client.read("health")
    await client.write("config", {"description": "changed"})
    assert (await client.read("health")).data["checks"]["skyflow"]["cached"] is False
    assert emulator.state.token_calls == 2


async def test_unparseable_stored_config_fails_the_config_check(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    """A config that no longer parses (e.g. written by another node with a broken file path)
    fails the config check without an internal error."""
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    await conftest.rewrite_stored_config(
        client,
        credentials_type="file_path",
        credentials_json=None,
        credentials_file_path="/nonexistent/skyflow-creds.json",
    )
    outcome = await client.read("health")
    assert outcome.status == 503
    assert outcome.data["checks"]["config"]["ok"] is False
    assert "credentials_file_path" in outcome.data["checks"]["config"]["message"]
    assert outcome.data["checks"]["storage"]["ok"] is True


async def test_a_probe_token_answers_for_skyflow_only_for_a_minute(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token from the config write's validation keeps health green for a minute at most:
    after that health asks Skyflow again and reports it down."""
    import time

    from skyflow_vault_plugin.skyflow import path_health

    await client.write("config", {"credentials_json": creds})  # validates: a probe token
    assert (await client.read("health")).data["checks"]["skyflow"]["cached"] is True
    emulator.state.set_faults(Faults(fail_status=503))
    later = time.time() + path_health.HEALTH_PROBE_INTERVAL + 1
    monkeypatch.setattr(time, "time", lambda: later)
    outcome = await client.read("health")
    assert outcome.status == 503
    assert outcome.data["checks"]["skyflow"]["ok"] is False
    assert outcome.data["checks"]["skyflow"]["status"] == 503


# -- for people (the CLI shows only "errors" on a 503) and for load balancers -------------------


async def test_unhealthy_answer_carries_errors_naming_the_fix(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    unconfigured = await client.read("health")
    assert unconfigured.status == 503
    assert unconfigured.errors == ["config: not configured: write the service account to config"]

    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    emulator.state.set_faults(Faults(reject=True))
    rejected = await client.read("health")
    assert rejected.status == 503
    assert len(rejected.errors) == 1
    assert rejected.errors[0].startswith("skyflow: Skyflow token request failed: rejected")
    assert "once the key is active in Skyflow, write the config again" in rejected.errors[0]
    assert rejected.data["healthy"] is False  # the data is still there for curl

    emulator.state.set_faults(Faults(fail_status=503))
    unavailable = await client.read("health")
    assert "see docs/operations.md, Troubleshooting" in unavailable.errors[0]


async def test_unhealthy_code_overrides_the_status(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    as_200 = await client.read("health", {"unhealthy_code": "200"})
    assert as_200.status == 200
    assert as_200.data["healthy"] is False
    assert as_200.errors == []
    assert as_200.warnings == ["config: not configured: write the service account to config"]
    as_429 = await client.read("health", {"unhealthy_code": "429"})
    assert as_429.status == 429
    assert as_429.errors == as_200.warnings


@pytest.mark.parametrize("code", ["204", "100", "600", "soon"])
async def test_unhealthy_code_must_be_a_status_with_a_body(
    client: PluginTestClient, code: str
) -> None:
    refused = await client.read("health", {"unhealthy_code": code})
    assert refused.status == 400
    assert "'unhealthy_code'" in refused.errors[0]


async def test_healthy_ignores_unhealthy_code_and_reports_the_probe_age(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds})  # validation leaves a probe token
    healthy = await client.read("health", {"unhealthy_code": "200"})
    assert healthy.status == 200
    assert healthy.warnings == []
    skyflow = healthy.data["checks"]["skyflow"]
    assert skyflow["cached"] is True
    assert 0 <= skyflow["age_seconds"] < 60
