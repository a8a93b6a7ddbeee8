"""``health``: storage, config and Skyflow checks, through both drivers."""

from __future__ import annotations

import dataclasses

import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults
from skyflow_vault_plugin.skyflow.backend import PLUGIN_VERSION
from tests.skyflow import conftest
from vault_plugin_sdk.framework import StorageEntry
from vault_plugin_sdk.testing import GrpcDriver, PluginTestClient

POLICY = dataclasses.replace(conftest.POLICY, max_attempts=2)
MOUNT_POINT = "skyflow/clcm/"
pytestmark = pytest.mark.usefixtures("fresh_emulator")


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
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str], status: int
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
    assert "Invalid credentials" in skyflow["message"]


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
    entry = await client.storage.get("config")
    assert entry is not None
    raw = entry.json()
    raw.update(credentials_type="file_path", credentials_json=None)
    raw["credentials_file_path"] = "/nonexistent/skyflow-creds.json"
    await client.storage.put(StorageEntry.from_json("config", raw, seal_wrap=True))
    driver = client.driver
    if isinstance(driver, GrpcDriver):
        await driver.invalidate("config")
    else:
        await driver.backend.invalidate("config")
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
