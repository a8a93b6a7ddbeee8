"""``roles/`` and ``roles/<name>``, through both drivers.

Every refused write is followed by a read-back showing that nothing stored changed.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from skyflow_vault_plugin.skyflow import path_roles
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.storage import SCHEMA_VERSION
from vault_plugin_sdk.testing import Outcome, PluginTestClient

EMULATOR_HOSTS = TokenHosts.parse("emulator.test")  # the in-process emulator's host

POLICY = ExchangePolicy(deadline=2.0, max_attempts=2, backoff_base=0.01, backoff_max=0.02)


MOUNT_POINT = "skyflow/lending/"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A controllable clock for created_at/updated_at (RFC 3339 to the second)."""
    ticks = (f"2030-01-01T00:00:{second:02d}Z" for second in itertools.count())
    seen: list[str] = []

    def now() -> str:
        seen.append(next(ticks))
        return seen[-1]

    monkeypatch.setattr(path_roles, "utc_now", now)
    return seen


def assert_names(outcome: Outcome, field: str) -> None:
    assert outcome.status == 400, outcome
    assert outcome.errors
    assert f"'{field}'" in outcome.errors[0], outcome.errors[0]


async def snapshot(client: PluginTestClient, name: str) -> tuple[bytes | None, dict[str, Any]]:
    """The raw stored bytes and the read response of a role."""
    entry = await client.storage.get(f"roles/{name}")
    read = await client.read(f"roles/{name}")
    return (entry.value if entry else None), read.data


async def assert_refused_unchanged(
    client: PluginTestClient, data: dict[str, Any], field: str
) -> None:
    """Writing ``data`` to role ``a`` is refused naming ``field``; the role is as it was."""
    before = await snapshot(client, "a")
    assert_names(await client.write("roles/a", data), field)
    assert await snapshot(client, "a") == before


# ---------------------------------------------------------------------------------- CRUD


async def test_create_read_update_list_delete(client: PluginTestClient) -> None:
    created = await client.write(
        "roles/producer", {"role_ids": "r1", "description": "writes", "tags": "bu,prod"}
    )
    assert created.status == 200
    read = await client.read("roles/producer")
    assert read.status == 200
    assert read.data["name"] == "producer"
    assert read.data["role_ids"] == ["r1"]
    assert read.data["description"] == "writes"
    assert read.data["tags"] == ["bu", "prod"]
    assert read.data["min_remaining_ttl"] == 600
    assert read.data["cache_tokens"] is True
    assert read.data["ctx_mode"] == "free"
    assert read.data["allowed_ctx_keys"] == []
    assert read.data["required_ctx_keys"] == []
    assert read.data["ctx_template"] == {}
    assert read.data["created_at"].endswith("Z")
    assert "schema_version" not in read.data
    assert created.data == read.data

    updated = await client.write("roles/producer", {"role_ids": ["r1", "r2"]})
    assert updated.status == 200
    read = await client.read("roles/producer")
    assert read.data["role_ids"] == ["r1", "r2"]
    assert read.data["description"] == "writes"  # kept
    assert read.data["tags"] == ["bu", "prod"]

    await client.write("roles/consumer-analytics", {"role_ids": "a,b"})
    listed = await client.list("roles/")
    assert listed.status == 200
    assert listed.data["keys"] == ["consumer-analytics", "producer"]

    assert (await client.delete("roles/producer")).status == 204
    assert (await client.read("roles/producer")).status == 404
    assert (await client.list("roles/")).data["keys"] == ["consumer-analytics"]
    assert await client.storage.get("roles/producer") is None


async def test_list_of_no_roles_is_404(client: PluginTestClient) -> None:
    assert (await client.list("roles/")).status == 404


async def test_read_unknown_role_is_404(client: PluginTestClient) -> None:
    assert (await client.read("roles/nobody")).status == 404


async def test_delete_unknown_role_is_harmless(client: PluginTestClient) -> None:
    assert (await client.delete("roles/nobody")).status == 204


async def test_role_ids_forms(client: PluginTestClient) -> None:
    await client.write("roles/a", {"role_ids": "r1, r2 ,r3"})
    assert (await client.read("roles/a")).data["role_ids"] == ["r1", "r2", "r3"]
    await client.write("roles/b", {"role_ids": ["x.y:z-1", "w_2"]})
    assert (await client.read("roles/b")).data["role_ids"] == ["x.y:z-1", "w_2"]
    await client.write("roles/c", {"role_ids": [f"r{i}" for i in range(64)]})
    assert len((await client.read("roles/c")).data["role_ids"]) == 64
    await client.write("roles/d", {"role_ids": "x" * 128})
    assert (await client.read("roles/d")).data["role_ids"] == ["x" * 128]


async def test_role_ids_required_on_create(client: PluginTestClient) -> None:
    assert_names(await client.write("roles/a", {"description": "no ids"}), "role_ids")
    assert (await client.read("roles/a")).status == 404


async def test_storage_entry_is_seal_wrapped_with_schema_version(
    client: PluginTestClient,
) -> None:
    await client.write("roles/a", {"role_ids": "r1"})
    entry = await client.storage.get("roles/a")
    assert entry is not None
    assert entry.seal_wrap is True
    assert entry.json()["schema_version"] == SCHEMA_VERSION


async def test_created_at_kept_and_updated_at_changes(
    client: PluginTestClient, clock: list[str]
) -> None:
    await client.write("roles/a", {"role_ids": "r1"})
    first = (await client.read("roles/a")).data
    await client.write("roles/a", {"description": "changed"})
    second = (await client.read("roles/a")).data
    await client.write("roles/a", {"role_ids": "r2"})
    third = (await client.read("roles/a")).data
    assert first["created_at"] == second["created_at"] == third["created_at"]
    assert len({first["updated_at"], second["updated_at"], third["updated_at"]}) == 3
    assert first["updated_at"] < second["updated_at"] < third["updated_at"]


# ------------------------------------------------------------------- refused writes (bounds)

ROLE_ID_CASES: list[tuple[str, object]] = [
    ("empty string", ""),
    ("blank string", "   "),
    ("only commas", " , ,"),
    ("empty list", []),
    ("whitespace inside", "role one"),
    ("tab inside", ["a\tb"]),
    ("129 characters", "x" * 129),
    ("65 ids", [f"r{i}" for i in range(65)]),
    ("duplicate", "a,b,a"),
    ("odd character", "a/b"),
    ("non-ASCII", "rôle"),
    ("number", 7),
    ("list of numbers", [1, 2]),
]


@pytest.mark.parametrize("value", [pytest.param(value, id=name) for name, value in ROLE_ID_CASES])
async def test_role_ids_bounds_on_create(client: PluginTestClient, value: object) -> None:
    assert_names(await client.write("roles/a", {"role_ids": value}), "role_ids")
    assert (await client.read("roles/a")).status == 404
    assert await client.storage.get("roles/a") is None


@pytest.mark.parametrize("value", [pytest.param(value, id=name) for name, value in ROLE_ID_CASES])
async def test_role_ids_bounds_on_update(client: PluginTestClient, value: object) -> None:
    await client.write("roles/a", {"role_ids": "r1,r2", "description": "kept"})
    await assert_refused_unchanged(client, {"role_ids": value}, "role_ids")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(["a", ""], id="empty item in a JSON list"),
        pytest.param(["a", "   "], id="blank item in a JSON list"),
    ],
)
async def test_blank_role_id_in_a_list_is_refused(client: PluginTestClient, value: object) -> None:
    """Issue 3: "Empty, blank or whitespace-containing IDs ... are refused with 400". A JSON
    list that explicitly holds an empty ID must not be silently shortened."""
    assert_names(await client.write("roles/a", {"role_ids": value}), "role_ids")
    assert await client.storage.get("roles/a") is None


TAG_CASES: list[tuple[str, object]] = [
    ("33 tags", [f"t{i}" for i in range(33)]),
    ("65-character tag", "x" * 65),
    ("space inside", ["two words"]),
    ("control character", ["a\x01b"]),
    ("not a list", {"a": 1}),
]


@pytest.mark.parametrize("value", [pytest.param(value, id=name) for name, value in TAG_CASES])
async def test_tags_bounds(client: PluginTestClient, value: object) -> None:
    await client.write("roles/a", {"role_ids": "r1", "tags": "ok"})
    await assert_refused_unchanged(client, {"tags": value}, "tags")


async def test_tags_at_the_bounds_are_accepted(client: PluginTestClient) -> None:
    tags = [f"{i:02d}" + "x" * 62 for i in range(32)]
    assert (await client.write("roles/a", {"role_ids": "r1", "tags": tags})).status == 200
    assert (await client.read("roles/a")).data["tags"] == tags


async def test_description_bound(client: PluginTestClient) -> None:
    await client.write("roles/a", {"role_ids": "r1"})
    await assert_refused_unchanged(client, {"description": "d" * 1025}, "description")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300), (90, 90), ("90", 90), ("1h30s", None), ("59m59s", 3599), (0, 0)],
)
async def test_min_remaining_ttl_parsing(
    client: PluginTestClient, value: object, seconds: int | None
) -> None:
    outcome = await client.write("roles/a", {"role_ids": "r1", "min_remaining_ttl": value})
    if seconds is None:
        assert_names(outcome, "min_remaining_ttl")
        return
    assert outcome.status == 200
    assert (await client.read("roles/a")).data["min_remaining_ttl"] == seconds


@pytest.mark.parametrize("value", [3600, "1h", "2h", "soon", -5, True, "5 minutes"])
async def test_min_remaining_ttl_bounds(client: PluginTestClient, value: object) -> None:
    await client.write("roles/a", {"role_ids": "r1", "min_remaining_ttl": "5m"})
    await assert_refused_unchanged(client, {"min_remaining_ttl": value}, "min_remaining_ttl")


async def test_cache_tokens_flag(client: PluginTestClient) -> None:
    await client.write("roles/a", {"role_ids": "r1", "cache_tokens": "false"})
    assert (await client.read("roles/a")).data["cache_tokens"] is False
    await assert_refused_unchanged(client, {"cache_tokens": "perhaps"}, "cache_tokens")


# ------------------------------------------------------------------------------ ctx rules


async def test_ctx_settings_round_trip(client: PluginTestClient) -> None:
    template = {"user": "{{identity.entity.metadata.employee_id}}"}
    written = await client.write(
        "roles/a",
        {
            "role_ids": "r1",
            "ctx_mode": "restricted",
            "allowed_ctx_keys": "region,purpose",
            "required_ctx_keys": ["purpose"],
            "ctx_template": template,
        },
    )
    assert written.status == 200
    read = (await client.read("roles/a")).data
    assert read["ctx_mode"] == "restricted"
    assert read["allowed_ctx_keys"] == ["region", "purpose"]
    assert read["required_ctx_keys"] == ["purpose"]
    assert read["ctx_template"] == template


async def test_ctx_template_as_json_text(client: PluginTestClient) -> None:
    written = await client.write(
        "roles/a",
        {
            "role_ids": "r1",
            "ctx_mode": "none",
            "ctx_template": '{"user": "{{identity.entity.id}}"}',
        },
    )
    assert written.status == 200
    assert (await client.read("roles/a")).data["ctx_template"] == {"user": "{{identity.entity.id}}"}


CTX_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("invalid ctx_mode", {"ctx_mode": "loose"}, "ctx_mode"),
    ("ctx_mode wrong case", {"ctx_mode": "FREE"}, "ctx_mode"),
    (
        "required not in allowed",
        {"ctx_mode": "restricted", "allowed_ctx_keys": "a", "required_ctx_keys": "a,b"},
        "required_ctx_keys",
    ),
    (
        "required with ctx_mode none",
        {"ctx_mode": "none", "required_ctx_keys": "a"},
        "required_ctx_keys",
    ),
    ("bad allowed key", {"allowed_ctx_keys": ["user-id"]}, "allowed_ctx_keys"),
    ("bad required key", {"required_ctx_keys": ["a.b"]}, "required_ctx_keys"),
    (
        "too many allowed keys",
        {"allowed_ctx_keys": [f"k{i}" for i in range(65)]},
        "allowed_ctx_keys",
    ),
    (
        "template clashes with allowed",
        {
            "ctx_mode": "restricted",
            "allowed_ctx_keys": "user,region",
            "ctx_template": {"user": "{{identity.entity.id}}"},
        },
        "ctx_template",
    ),
    (
        "template clashes with required",
        {"required_ctx_keys": "user", "ctx_template": {"user": "{{identity.entity.id}}"}},
        "ctx_template",
    ),
    (
        "unknown placeholder",
        {"ctx_template": {"user": "{{identity.entity.email}}"}},
        "ctx_template",
    ),
    ("no placeholder", {"ctx_template": {"user": "plain text"}}, "ctx_template"),
    ("unclosed placeholder", {"ctx_template": {"user": "{{identity.entity.id"}}, "ctx_template"),
    ("empty template", {"ctx_template": {"user": ""}}, "ctx_template"),
    ("non-string template", {"ctx_template": {"user": 5}}, "ctx_template"),
    ("bad template key", {"ctx_template": {"user-id": "{{identity.entity.id}}"}}, "ctx_template"),
    (
        "groups not the whole value",
        {"ctx_template": {"groups": "g:{{identity.groups.names}}"}},
        "ctx_template",
    ),
    ("template not a map", {"ctx_template": "[1, 2]"}, "ctx_template"),
]


CTX_REFUSAL_PARAMS = [pytest.param(data, field, id=name) for name, data, field in CTX_REFUSALS]


@pytest.mark.parametrize(("data", "field"), CTX_REFUSAL_PARAMS)
async def test_ctx_rules_refused_on_create(
    client: PluginTestClient, data: dict[str, Any], field: str
) -> None:
    assert_names(await client.write("roles/a", {"role_ids": "r1", **data}), field)
    assert await client.storage.get("roles/a") is None


@pytest.mark.parametrize(("data", "field"), CTX_REFUSAL_PARAMS)
async def test_ctx_rules_refused_on_update(
    client: PluginTestClient, data: dict[str, Any], field: str
) -> None:
    await client.write(
        "roles/a",
        {
            "role_ids": "r1",
            "allowed_ctx_keys": "a",
            "ctx_template": {"t": "{{identity.entity.name}}"},
        },
    )
    await assert_refused_unchanged(client, data, field)


async def test_rules_are_checked_against_the_merged_role(client: PluginTestClient) -> None:
    """An update that only changes ctx_mode is checked with the stored keys."""
    await client.write("roles/a", {"role_ids": "r1", "required_ctx_keys": "purpose"})
    await assert_refused_unchanged(client, {"ctx_mode": "none"}, "required_ctx_keys")
    await assert_refused_unchanged(
        client, {"ctx_template": {"purpose": "{{identity.entity.id}}"}}, "ctx_template"
    )


# ------------------------------------------------------------------------------ misc


async def test_unknown_field_is_refused(client: PluginTestClient) -> None:
    assert_names(await client.write("roles/a", {"role_ids": "r1", "ttl": "1h"}), "ttl")
    assert await client.storage.get("roles/a") is None
    await client.write("roles/a", {"role_ids": "r1"})
    await assert_refused_unchanged(client, {"role_id": "r2"}, "role_id")


async def test_invalid_role_name_is_not_routed(client: PluginTestClient) -> None:
    outcome = await client.write("roles/bad name", {"role_ids": "r1"})
    assert outcome.status in (400, 404)
    assert (await client.list("roles/")).status == 404


async def test_help_documents_fields_and_bounds(client: PluginTestClient) -> None:
    text = await client.help("roles/a")
    for name in (
        "role_ids",
        "min_remaining_ttl",
        "cache_tokens",
        "ctx_mode",
        "allowed_ctx_keys",
        "required_ctx_keys",
        "ctx_template",
    ):
        assert name in text
    assert "1-64" in text


async def test_a_role_name_over_the_limit_is_400_naming_it_not_500(
    client: PluginTestClient,
) -> None:
    """The existence check runs before the write: a name it cannot take must not fail it
    (OpenBao turns any existence-check error into a 500 "internal error")."""
    too_long = "a" * 129
    outcome = await client.write(f"roles/{too_long}", {"role_ids": "r1"})
    assert outcome.status == 400
    assert "'name'" in outcome.errors[0]
    assert (await client.read(f"roles/{too_long}")).status == 400
    assert await client.storage.list("roles/") == []
