"""``config``: the mount's service account, through both drivers against the in-process emulator.

Secrets never reach an assertion message: key material is only searched for, and the search
reports positions, not text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults
from skyflow_vault_plugin.skyflow.backend import make_factory
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.mount import EngineSettings
from skyflow_vault_plugin.skyflow.storage import SCHEMA_VERSION
from tests.skyflow.conftest import POLICY, open_client, rewrite_stored_config, snake_case
from vault_plugin_sdk.testing import GrpcDriver, Outcome, PluginTestClient, open_driver

pytestmark = pytest.mark.usefixtures("fresh_emulator")


@pytest.fixture
def credentials_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SKYFLOW_CREDENTIALS_DIR; this mount (skyflow/insurance/) reads files under it."""
    base = tmp_path_factory.mktemp("credentials")
    (base / "skyflow" / "insurance").mkdir(parents=True)
    return base


@pytest.fixture
def tmp_path(credentials_dir: Path) -> Path:
    """Files of these tests go where the mount may read them."""
    return credentials_dir / "skyflow" / "insurance"


# -------------------------------------------------------------------------------- helpers


def pem_lines(creds: dict[str, str]) -> list[str]:
    """The base64 body lines of the account's PEM key (what a leak would contain)."""
    return [
        line.strip()
        for line in creds["privateKey"].splitlines()
        if line.strip() and not line.startswith("-----")
    ]


def leaks(text: str, creds: dict[str, str]) -> list[str]:
    """Where key material shows up in ``text`` -- by description, never the text itself."""
    found = []
    if "PRIVATE KEY" in text:
        found.append("PEM marker 'PRIVATE KEY'")
    if "-----BEGIN" in text:
        found.append("PEM BEGIN line")
    for index, line in enumerate(pem_lines(creds)):
        if line in text:
            found.append(f"PEM body line {index}")
    return found


def outcome_text(outcome: Outcome) -> str:
    return json.dumps(
        {"data": outcome.data, "warnings": outcome.warnings, "errors": outcome.errors}
    )


def write_file(tmp_path: Path, creds: dict[str, str], name: str = "creds.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(creds))
    os.chmod(path, 0o600)
    return str(path)


async def stored_config(client: PluginTestClient) -> dict[str, Any]:
    entry = await client.storage.get("config")
    assert entry is not None
    value: dict[str, Any] = entry.json()
    return value


def assert_names(outcome: Outcome, status: int, field: str) -> None:
    assert outcome.status == status
    assert outcome.errors, "expected an error message"
    assert f"'{field}'" in outcome.errors[0]


# -------------------------------------------------------------------------- credentials_json


async def test_create_with_json_text(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    written = await client.write("config", {"credentials_json": json.dumps(creds)})
    assert written.status == 200
    read = await client.read("config")
    assert read.status == 200
    assert read.data["credentials_configured"] is True
    assert read.data["credentials_type"] == "json"
    assert read.data["client_id"] == creds["clientID"]
    assert read.data["key_id"] == creds["keyID"]
    assert read.data["token_uri"] == creds["tokenURI"]
    assert read.data["client_name"] == creds["clientName"]
    assert read.data["version"] == 1
    assert read.data["last_updated"].endswith("Z")
    assert "credentials_file_path" not in read.data


@pytest.mark.parametrize("form", ["object", "pretty", "snake_case", "snake_case_text"])
async def test_create_with_other_json_forms(
    client: PluginTestClient, creds: dict[str, str], form: str
) -> None:
    value: object
    if form == "object":
        value = creds
    elif form == "pretty":
        value = json.dumps(creds, indent=4, sort_keys=True)
    elif form == "snake_case":
        value = snake_case(creds)
    else:
        value = json.dumps(snake_case(creds), indent=2)
    written = await client.write("config", {"credentials_json": value})
    assert written.status == 200, written.errors
    read = await client.read("config")
    assert read.data["client_id"] == creds["clientID"]
    assert read.data["key_id"] == creds["keyID"]
    assert read.data["credentials_type"] == "json"


async def test_json_config_mints_a_token_for_creds(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": json.dumps(creds, indent=2)})
    await client.write("roles/producer", {"role_ids": "r1"})
    token = await client.read("creds/producer")
    assert token.status == 200
    assert emulator.state.requests[-1].client_id == creds["clientID"]


# ---------------------------------------------------------------------- credentials_file_path


async def test_create_with_file_path(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    tmp_path: Path,
) -> None:
    path = write_file(tmp_path, creds)
    written = await client.write("config", {"credentials_file_path": path})
    assert written.status == 200, written.errors
    assert any("credentials_file_path" in w for w in written.warnings)
    assert emulator.state.token_calls == 1
    read = await client.read("config")
    assert read.data["credentials_type"] == "file_path"
    assert read.data["credentials_file_path"] == path
    assert read.data["client_id"] == creds["clientID"]
    stored = await stored_config(client)
    assert stored["credentials_json"] is None
    assert stored["credentials_file_path"] == path
    # the file's key is used for tokens
    await client.write("roles/producer", {"role_ids": "r1"})
    assert (await client.read("creds/producer")).status == 200
    assert emulator.state.requests[-1].client_id == creds["clientID"]


async def test_relative_file_path_is_refused(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str], tmp_path: Path
) -> None:
    write_file(tmp_path, creds)
    refused = await client.write("config", {"credentials_file_path": "creds.json"})
    assert_names(refused, 400, "credentials_file_path")
    assert (await client.read("config")).status == 404
    assert emulator.state.token_calls == 0


async def test_missing_file_is_refused(client: PluginTestClient, tmp_path: Path) -> None:
    refused = await client.write("config", {"credentials_file_path": str(tmp_path / "nope.json")})
    assert_names(refused, 400, "credentials_file_path")


async def test_bad_file_content_is_the_generic_error_and_logged(
    client: PluginTestClient,
    creds: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_file(tmp_path, {**creds, "tokenURI": "http://emulator.test/x"})
    refused = await client.write("config", {"credentials_file_path": path})
    assert_names(refused, 400, "credentials_file_path")
    assert "tokenURI" not in refused.errors[0]
    assert "plugin's log" in refused.errors[0]
    if isinstance(client.driver, GrpcDriver):
        return  # the plugin logs in its own process
    assert "credentials_file_path.tokenURI" in caplog.text


async def test_file_mode_needs_the_operators_directory(
    emulator: InProcessEmulator, creds: dict[str, str], tmp_path: Path
) -> None:
    async with open_client("direct", emulator, credentials_dir=None) as client:
        refused = await client.write(
            "config", {"credentials_file_path": write_file(tmp_path, creds)}
        )
    assert_names(refused, 400, "credentials_file_path")
    assert "SKYFLOW_CREDENTIALS_DIR" in refused.errors[0]


async def test_a_file_of_another_mount_is_refused(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str], tmp_path: Path
) -> None:
    lending = tmp_path.parent / "lending"
    lending.mkdir()
    path = write_file(lending, creds)
    for attempt in (path, f"{tmp_path}/../lending/creds.json"):
        refused = await client.write("config", {"credentials_file_path": attempt})
        assert_names(refused, 400, "credentials_file_path")
    (tmp_path / "link.json").symlink_to(path)
    refused = await client.write("config", {"credentials_file_path": str(tmp_path / "link.json")})
    assert_names(refused, 400, "credentials_file_path")
    assert (await client.read("config")).status == 404
    assert emulator.state.token_calls == 0


# -------------------------------------------------------------------------- exactly one rule


async def test_both_sources_are_refused(
    client: PluginTestClient, creds: dict[str, str], tmp_path: Path
) -> None:
    refused = await client.write(
        "config",
        {
            "credentials_json": json.dumps(creds),
            "credentials_file_path": write_file(tmp_path, creds),
        },
    )
    assert refused.status == 400
    assert "credentials_file_path" in refused.errors[0]
    assert "credentials_json" in refused.errors[0]
    assert (await client.read("config")).status == 404


async def test_no_source_on_create_is_refused(client: PluginTestClient) -> None:
    refused = await client.write("config", {"description": "nothing else"})
    assert refused.status == 400
    assert "credentials_json" in refused.errors[0]
    assert (await client.read("config")).status == 404


async def test_both_sources_on_update_leave_the_config_unchanged(
    client: PluginTestClient, creds: dict[str, str], tmp_path: Path
) -> None:
    await client.write("config", {"credentials_json": json.dumps(creds)})
    before = await client.read("config")
    refused = await client.write(
        "config",
        {
            "credentials_json": json.dumps(creds),
            "credentials_file_path": write_file(tmp_path, creds),
        },
    )
    assert refused.status == 400
    assert (await client.read("config")).data == before.data


# ---------------------------------------------------------------------- invalid credentials


def _without(creds: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in creds.items() if k != key}


def _other_key_pem(kind: str) -> str:
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return "-----BEGIN " + "PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"


INVALID_CASES: list[tuple[str, Any, str]] = [
    ("privateKey missing", lambda c: _without(c, "privateKey"), "credentials_json.privateKey"),
    ("privateKey not PEM", lambda c: {**c, "privateKey": "abc"}, "credentials_json.privateKey"),
    (
        "privateKey broken PEM",
        lambda c: {**c, "privateKey": _other_key_pem("garbage")},
        "credentials_json.privateKey",
    ),
    (
        "privateKey not RSA",
        lambda c: {**c, "privateKey": _other_key_pem("ec")},
        "credentials_json.privateKey",
    ),
    ("privateKey number", lambda c: {**c, "privateKey": 7}, "credentials_json.privateKey"),
    (
        "tokenURI http",
        lambda c: {**c, "tokenURI": "http://emulator.test/v1/auth/sa/oauth/token"},
        "credentials_json.tokenURI",
    ),
    ("tokenURI missing", lambda c: _without(c, "tokenURI"), "credentials_json.tokenURI"),
    ("tokenURI not a URL", lambda c: {**c, "tokenURI": "emulator"}, "credentials_json.tokenURI"),
    ("clientID missing", lambda c: _without(c, "clientID"), "credentials_json.clientID"),
    ("clientID empty", lambda c: {**c, "clientID": "  "}, "credentials_json.clientID"),
    ("clientID list", lambda c: {**c, "clientID": ["a"]}, "credentials_json.clientID"),
    ("keyID missing", lambda c: _without(c, "keyID"), "credentials_json.keyID"),
    (
        "snake_case key named as written",
        lambda c: {**snake_case(c), "token_uri": "ftp://x"},
        "credentials_json.token_uri",
    ),
    ("not an object", lambda c: json.dumps([1, 2]), "credentials_json"),
    ("not JSON", lambda c: "{not json", "credentials_json"),
    ("empty", lambda c: "", "credentials_json"),
]


@pytest.mark.parametrize(
    ("make", "field"),
    [pytest.param(make, field, id=name) for name, make, field in INVALID_CASES],
)
async def test_invalid_credentials_name_the_field(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    make: Any,
    field: str,
) -> None:
    value = make(creds)
    refused = await client.write("config", {"credentials_json": value})
    assert_names(refused, 400, field)
    assert leaks(outcome_text(refused), creds) == []
    assert (await client.read("config")).status == 404
    assert emulator.state.token_calls == 0


async def test_invalid_update_keeps_the_previous_config(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds, "description": "first"})
    before = await client.read("config")
    stored = await stored_config(client)
    refused = await client.write(
        "config", {"credentials_json": {**creds, "tokenURI": "http://x"}, "description": "second"}
    )
    assert_names(refused, 400, "credentials_json.tokenURI")
    assert (await client.read("config")).data == before.data
    assert await stored_config(client) == stored


# --------------------------------------------------------------------- validate_credentials


async def test_validation_calls_skyflow_once(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    written = await client.write("config", {"credentials_json": creds})
    assert written.status == 200
    assert emulator.state.token_calls == 1
    assert emulator.state.successes == 1
    assert emulator.state.requests[-1].client_id == creds["clientID"]


async def test_validation_off_saves_without_calling(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    emulator.state.set_faults(Faults(reject=True))  # it would fail if it were called
    written = await client.write(
        "config", {"credentials_json": creds, "validate_credentials": False}
    )
    assert written.status == 200
    assert emulator.state.token_calls == 0
    assert (await client.read("config")).data["client_id"] == creds["clientID"]


async def test_rejected_credentials_leave_the_previous_config(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    other_creds: dict[str, str],
) -> None:
    await client.write("config", {"credentials_json": creds, "description": "working"})
    await client.write("roles/producer", {"role_ids": "r1"})
    before = await client.read("config")
    stored = await stored_config(client)
    emulator.state.reset_stats()
    emulator.state.set_faults(Faults(reject=True))

    refused = await client.write(
        "config", {"credentials_json": other_creds, "description": "replacement"}
    )
    assert_names(refused, 400, "credentials_json")
    assert "rejected" in refused.errors[0]
    assert leaks(outcome_text(refused), other_creds) == []
    assert emulator.state.token_calls == 1  # a rejection is not retried
    assert (await client.read("config")).data == before.data
    assert await stored_config(client) == stored

    # and the previous config still works
    emulator.state.reset_faults()
    token = await client.read("creds/producer")
    assert token.status == 200
    assert emulator.state.requests[-1].client_id == creds["clientID"]


async def test_rejected_file_credentials_name_the_file_field(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str], tmp_path: Path
) -> None:
    emulator.state.set_faults(Faults(reject=True))
    refused = await client.write("config", {"credentials_file_path": write_file(tmp_path, creds)})
    assert_names(refused, 400, "credentials_file_path")
    assert (await client.read("config")).status == 404


async def test_unavailable_skyflow_is_503_and_leaves_the_previous_config(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    other_creds: dict[str, str],
) -> None:
    await client.write("config", {"credentials_json": creds})
    before = await client.read("config")
    stored = await stored_config(client)
    emulator.state.reset_stats()
    emulator.state.set_faults(Faults(fail_status=503))

    refused = await client.write("config", {"credentials_json": other_creds})
    assert refused.status == 503
    assert "validate_credentials=false" in refused.errors[0]
    assert leaks(outcome_text(refused), other_creds) == []
    assert emulator.state.token_calls == POLICY.max_attempts  # 503 is retried
    assert (await client.read("config")).data == before.data
    assert await stored_config(client) == stored


async def test_unavailable_skyflow_on_first_write_stores_nothing(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    emulator.state.set_faults(Faults(fail_status=503))
    refused = await client.write("config", {"credentials_json": creds})
    assert refused.status == 503
    assert (await client.read("config")).status == 404
    assert await client.storage.get("config") is None


async def test_update_without_credentials_does_not_validate(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds})
    emulator.state.reset_stats()
    emulator.state.set_faults(Faults(reject=True))
    updated = await client.write("config", {"description": "only metadata"})
    assert updated.status == 200
    assert emulator.state.token_calls == 0


# ------------------------------------------------------------------------------ updates


async def test_update_keeps_unspecified_fields(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    await client.write(
        "config", {"credentials_json": creds, "description": "insurance", "tags": "bu,prod"}
    )
    await client.write("config", {"tags": ["eu"]})
    read = await client.read("config")
    assert read.data["description"] == "insurance"
    assert read.data["tags"] == ["eu"]
    assert read.data["client_id"] == creds["clientID"]
    assert read.data["credentials_type"] == "json"

    await client.write("config", {"description": "renamed"})
    read = await client.read("config")
    assert read.data["description"] == "renamed"
    assert read.data["tags"] == ["eu"]
    stored = await stored_config(client)
    assert stored["credentials_json"] is not None


async def test_setting_the_other_source_clears_the_first(
    client: PluginTestClient,
    creds: dict[str, str],
    other_creds: dict[str, str],
    tmp_path: Path,
) -> None:
    await client.write("config", {"credentials_json": creds, "description": "kept"})
    path = write_file(tmp_path, other_creds)

    await client.write("config", {"credentials_file_path": path})
    read = await client.read("config")
    assert read.data["credentials_type"] == "file_path"
    assert read.data["credentials_file_path"] == path
    assert read.data["client_id"] == other_creds["clientID"]
    assert read.data["description"] == "kept"
    stored = await stored_config(client)
    assert stored["credentials_json"] is None

    await client.write("config", {"credentials_json": creds})
    read = await client.read("config")
    assert read.data["credentials_type"] == "json"
    assert "credentials_file_path" not in read.data
    assert read.data["client_id"] == creds["clientID"]
    stored = await stored_config(client)
    assert stored["credentials_file_path"] is None
    assert stored["credentials_json"] is not None


async def test_version_bumps_on_every_write(
    client: PluginTestClient, creds: dict[str, str], other_creds: dict[str, str]
) -> None:
    versions = []
    for data in (
        {"credentials_json": creds},
        {"description": "x"},
        {"credentials_json": other_creds},
        {"tags": "a"},
    ):
        written = await client.write("config", data)
        assert written.status == 200
        versions.append(written.data["version"])
        assert (await client.read("config")).data["version"] == versions[-1]
    assert versions == [1, 2, 3, 4]


async def test_description_and_tags_bounds(client: PluginTestClient, creds: dict[str, str]) -> None:
    await client.write("config", {"credentials_json": creds})
    before = await client.read("config")
    assert_names(await client.write("config", {"description": "x" * 1025}), 400, "description")
    assert_names(await client.write("config", {"tags": ["a b"]}), 400, "tags")
    assert_names(await client.write("config", {"tags": [f"t{i}" for i in range(33)]}), 400, "tags")
    assert (await client.read("config")).data == before.data


# ------------------------------------------------------------------------------ secrecy


async def test_read_never_contains_the_key(
    client: PluginTestClient, creds: dict[str, str], tmp_path: Path
) -> None:
    for data in (
        {"credentials_json": creds},
        {"credentials_json": json.dumps(creds, indent=2)},
        {"credentials_json": snake_case(creds)},
        {"credentials_file_path": write_file(tmp_path, creds)},
    ):
        written = await client.write("config", data)
        assert written.status == 200
        assert leaks(outcome_text(written), creds) == []
        read = await client.read("config")
        assert read.status == 200
        assert leaks(outcome_text(read), creds) == []
        assert "credentials_json" not in read.data
        assert "private_key" not in read.data


async def test_help_and_refusals_never_contain_the_key(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    broken = {**creds, "clientID": ""}
    refused = await client.write("config", {"credentials_json": json.dumps(broken)})
    assert refused.status == 400
    assert leaks(outcome_text(refused), creds) == []
    assert leaks(await client.help("config"), creds) == []


# ------------------------------------------------------------------------- misc & storage


async def test_unknown_field_is_refused_naming_it(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    refused = await client.write("config", {"credentials_json": creds, "colour": "red"})
    assert_names(refused, 400, "colour")
    assert (await client.read("config")).status == 404


async def test_wrong_field_types_are_refused(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    assert_names(await client.write("config", {"credentials_json": 42}), 400, "credentials_json")
    assert_names(
        await client.write("config", {"credentials_json": creds, "validate_credentials": "maybe"}),
        400,
        "validate_credentials",
    )
    assert (await client.read("config")).status == 404


async def test_delete_then_read_is_404(client: PluginTestClient, creds: dict[str, str]) -> None:
    await client.write("config", {"credentials_json": creds})
    assert (await client.delete("config")).status == 204
    assert (await client.read("config")).status == 404
    assert await client.storage.get("config") is None
    # a new create works afterwards, starting over at version 1
    recreated = await client.write("config", {"credentials_json": creds})
    assert recreated.status == 200
    assert recreated.data["version"] == 1


async def test_storage_entry_is_seal_wrapped_with_schema_version(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    await client.write("config", {"credentials_json": creds})
    entry = await client.storage.get("config")
    assert entry is not None
    assert entry.seal_wrap is True
    assert entry.json()["schema_version"] == SCHEMA_VERSION


async def test_newer_schema_is_not_misread(client: PluginTestClient, creds: dict[str, str]) -> None:
    """A config stored by a newer release is refused, not half-read (through a fresh mount
    state: invalidate makes the engine reload from storage)."""
    await client.write("config", {"credentials_json": creds})
    await rewrite_stored_config(client, schema_version=SCHEMA_VERSION + 1)
    read = await client.read("config")
    assert read.status >= 400
    assert leaks(outcome_text(read), creds) == []


async def test_help_describes_every_field(client: PluginTestClient) -> None:
    text = await client.help("config")
    for name in (
        "credentials_json",
        "credentials_file_path",
        "description",
        "tags",
        "validate_credentials",
    ):
        assert name in text


# ---------------------------------------------------------------- error texts that name the fix


async def test_unknown_field_suggests_the_closest_name(
    client: PluginTestClient, creds: dict[str, str]
) -> None:
    refused = await client.write("config", {"credential_json": json.dumps(creds)})
    assert_names(refused, 400, "credential_json")
    assert "did you mean 'credentials_json'?" in refused.errors[0]
    assert leaks(outcome_text(refused), creds) == []


@pytest.mark.parametrize("name", ["insurance-sa.json", "./creds/sa.json", "/tmp/sa.json"])
async def test_a_file_name_as_credentials_json_gets_the_at_hint(
    client: PluginTestClient, name: str
) -> None:
    refused = await client.write("config", {"credentials_json": name})
    assert_names(refused, 400, "credentials_json")
    assert (
        f"looks like a file name: to send the file's contents write credentials_json=@{name}"
        in (refused.errors[0])
    )


@pytest.mark.parametrize(
    "value",
    [
        "clientID: abc, keyID: def",
        # A line of base64 key material has no dot: never taken for a file name, never echoed.
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC/KcwggSjAgEAAoIBAQC7",
    ],
)
async def test_other_non_json_text_gets_no_file_name_hint(
    client: PluginTestClient, value: str
) -> None:
    refused = await client.write("config", {"credentials_json": value})
    assert_names(refused, 400, "credentials_json")
    assert "file name" not in refused.errors[0]
    assert value not in refused.errors[0]


async def test_rejected_credentials_say_rejected_once(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    emulator.state.set_faults(Faults(reject=True))
    refused = await client.write("config", {"credentials_json": creds})
    assert_names(refused, 400, "credentials_json")
    assert refused.errors[0].count("rejected") == 1, refused.errors[0]
    assert "Skyflow token request failed: rejected (HTTP 401" in refused.errors[0]
    assert "nothing was saved" in refused.errors[0]


async def test_switching_to_another_client_warns(
    client: PluginTestClient, creds: dict[str, str], other_creds: dict[str, str]
) -> None:
    first = await client.write("config", {"credentials_json": creds})
    assert first.warnings == []
    again = await client.write("config", {"credentials_json": creds, "description": "same"})
    assert again.warnings == []  # same clientID: nothing to say
    switched = await client.write("config", {"credentials_json": other_creds})
    assert switched.status == 200
    assert len(switched.warnings) == 1
    warning = switched.warnings[0]
    assert f"client_id changed from {creds['clientID']} to {other_creds['clientID']}" in warning
    assert "cached token was dropped" in warning


# ------------------------------------------------------------------ token-host allow-list


async def test_a_token_uri_off_the_allow_list_is_refused(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    for uri in (
        "https://169.254.169.254/v1/auth/sa/oauth/token",
        "https://emulator.test:8443/v1/auth/sa/oauth/token",
    ):
        refused = await client.write("config", {"credentials_json": {**creds, "tokenURI": uri}})
        assert_names(refused, 400, "credentials_json.tokenURI")
        assert "SKYFLOW_ALLOWED_TOKEN_HOSTS" in refused.errors[0]
    assert (await client.read("config")).status == 404
    assert emulator.state.token_calls == 0


async def test_a_stored_config_off_a_narrowed_allow_list_stops_minting(
    emulator: InProcessEmulator, creds: dict[str, str], credentials_dir: Path
) -> None:
    """The list applies to every load, not only to writes: an operator who narrows it (or a
    config written before it existed) cannot keep minting against the old host."""
    async with open_client("direct", emulator, credentials_dir) as client:
        await client.write("config", {"credentials_json": creds})
        entry = await client.storage.get("config")
    assert entry is not None
    settings = EngineSettings(
        transport=emulator.transport(),
        policy=POLICY,
        allowed_token_hosts=TokenHosts.parse("manage.skyflowapis.com"),
    )
    calls = emulator.state.token_calls
    async with open_driver("direct", make_factory(settings)) as driver:
        narrowed = PluginTestClient(driver, mount_point="skyflow/insurance/")
        await narrowed.storage.put(entry)  # written before the list was narrowed
        await narrowed.write("roles/producer", {"role_ids": "r1"})
        refused = await narrowed.read("creds/producer")
    assert_names(refused, 400, "credentials_json.tokenURI")
    assert emulator.state.token_calls == calls
