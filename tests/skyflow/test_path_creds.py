"""``creds/<role>``: tokens from the in-process emulator, through both drivers.

The emulator's counters show how often Skyflow was reached. Tokens are compared by digest and
never shown in an assertion message.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults
from skyflow_vault_plugin.skyflow import storage as store
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.storage import ConfigEntry, RoleEntry
from tests.skyflow.conftest import POLICY, invalidate, open_client, token_claims
from vault_plugin_sdk.framework import Entity, StaticSystemView
from vault_plugin_sdk.testing import Outcome, PluginTestClient

EMULATOR_HOSTS = TokenHosts.parse("emulator.test")  # the in-process emulator's host

SLACK = 0.75  # seconds allowed beyond a deadline (gRPC hops, scheduling)


pytestmark = pytest.mark.usefixtures("fresh_emulator")


async def configure(client: PluginTestClient, creds: dict[str, str]) -> None:
    written = await client.write(
        "config", {"credentials_json": creds, "validate_credentials": False}
    )
    assert written.status == 200
    assert (await client.write("roles/producer", {"role_ids": "r1"})).status == 200
    assert (
        await client.write("roles/consumer-analytics", {"role_ids": ["r1", "r2"]})
    ).status == 200


@pytest.fixture
async def client(
    kind: str, emulator: InProcessEmulator, creds: dict[str, str]
) -> AsyncIterator[PluginTestClient]:
    """A configured mount with roles ``producer`` (r1) and ``consumer-analytics`` (r1, r2)."""
    async with open_client(kind, emulator) as test_client:
        await configure(test_client, creds)
        emulator.state.reset_stats()
        yield test_client


# -------------------------------------------------------------------------------- helpers


def digest(token: object) -> str:
    """A short fingerprint of a token, safe to show."""
    assert isinstance(token, str)
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def claims(emulator: InProcessEmulator, outcome: Outcome) -> dict[str, Any]:
    """The verified claims of the token in a creds response."""
    assert outcome.status == 200, outcome.errors
    return token_claims(emulator, outcome.data["access_token"])


def calls(emulator: InProcessEmulator) -> int:
    return emulator.state.token_calls


async def wait_for_calls(emulator: InProcessEmulator, count: int) -> None:
    """Wait (up to 2 s) until the emulator has received ``count`` token calls."""
    for _ in range(400):
        if calls(emulator) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the emulator saw {calls(emulator)} calls, expected {count}")


def no_token_text(outcome: Outcome) -> bool:
    text = json.dumps({"errors": outcome.errors, "warnings": outcome.warnings})
    return "eyJ" not in text and "PRIVATE KEY" not in text


# -------------------------------------------------------------------------- the token itself


async def test_token_carries_account_role_ids_and_string_ctx(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    outcome = await client.read("creds/consumer-analytics", {"ctx": "user-42"})
    assert outcome.data["token_type"] == "Bearer"
    token = claims(emulator, outcome)
    assert token["sub"] == creds["clientID"]
    assert token["scope"] == ["r1", "r2"]
    assert token["ctx"] == "user-42"
    recorded = emulator.state.requests[-1]
    assert recorded.scope == "role:r1 role:r2"
    assert recorded.client_id == creds["clientID"]


async def test_post_with_map_ctx(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    ctx = {"user_id": "u-1", "region": "eu", "level": 3, "flags": {"pii": True}}
    outcome = await client.write("creds/producer", {"ctx": ctx})
    token = claims(emulator, outcome)
    assert token["sub"] == creds["clientID"]
    assert token["scope"] == ["r1"]
    assert token["ctx"] == ctx


async def test_post_with_string_ctx_and_get_without_ctx(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    with_ctx = await client.write("creds/producer", {"ctx": "abc"})
    assert claims(emulator, with_ctx)["ctx"] == "abc"
    without = await client.read("creds/producer")
    assert "ctx" not in claims(emulator, without)
    blank = await client.read("creds/producer", {"ctx": "   "})
    assert "ctx" not in claims(emulator, blank)
    assert digest(blank.data["access_token"]) == digest(without.data["access_token"])


@pytest.mark.parametrize(
    "ctx",
    [
        pytest.param({"bad-key": 1}, id="dash in key"),
        pytest.param({"a b": 1}, id="space in key"),
        pytest.param({"ünï": 1}, id="non-ASCII key"),
        pytest.param({"": 1}, id="empty key"),
        pytest.param({"k\n": 1}, id="newline in key"),
        pytest.param([1, 2], id="list"),
        pytest.param(5, id="number"),
        pytest.param(
            {"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}, id="deep"
        ),
        pytest.param({"big": "x" * 9000}, id="too large"),
        pytest.param("y" * 9000, id="string too large"),
    ],
)
async def test_bad_ctx_is_400_naming_ctx(
    client: PluginTestClient, emulator: InProcessEmulator, ctx: object
) -> None:
    outcome = await client.write("creds/producer", {"ctx": ctx})
    assert outcome.status == 400
    assert "'ctx'" in outcome.errors[0]
    assert calls(emulator) == 0


async def test_unknown_field_is_refused(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    outcome = await client.write("creds/producer", {"context": "x"})
    assert outcome.status == 400
    assert "'context'" in outcome.errors[0]
    assert calls(emulator) == 0


async def test_unknown_role_is_400(client: PluginTestClient, emulator: InProcessEmulator) -> None:
    # 400 as Vault's aws/database/gcp engines answer: the CLI shows a 400's reason, while it
    # prints only "No value found" for a 404 on read.
    outcome = await client.read("creds/nobody")
    assert outcome.status == 400
    assert outcome.errors[0].startswith("role 'nobody' does not exist")
    assert "roles/" in outcome.errors[0]
    assert (await client.write("creds/nobody", {"ctx": {"a": 1}})).status == 400
    assert (await client.read("roles/nobody")).status == 404  # an object read stays a 404
    assert calls(emulator) == 0


async def test_unconfigured_mount_is_400_mentioning_config(
    kind: str, emulator: InProcessEmulator
) -> None:
    async with open_client(kind, emulator) as client:
        await client.write("roles/producer", {"role_ids": "r1"})
        outcome = await client.read("creds/producer")
        assert outcome.status == 400
        assert "config" in outcome.errors[0]
        assert (await client.read("creds/nobody")).status == 400
    assert calls(emulator) == 0


async def test_expiry_fields_describe_the_token_returned(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.token_lifetime = 1800
    first = await client.read("creds/producer")
    exp = claims(emulator, first)["exp"]
    expected_at = datetime.datetime.fromtimestamp(exp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert first.data["expires_at"] == expected_at
    assert isinstance(first.data["expires_in"], int)
    assert abs(first.data["expires_in"] - (exp - time.time())) <= 2
    assert 1790 <= first.data["expires_in"] <= 1800

    # a reuse reports the reused token's remaining time, not the lifetime a fresh token
    # would have now (the emulator would issue 3600 s tokens)
    emulator.state.token_lifetime = 3600
    second = await client.read("creds/producer")
    assert digest(second.data["access_token"]) == digest(first.data["access_token"])
    assert second.data["expires_at"] == expected_at
    assert second.data["expires_in"] <= first.data["expires_in"]
    assert abs(second.data["expires_in"] - (exp - time.time())) <= 2
    assert calls(emulator) == 1


async def test_mounts_are_isolated(
    emulator: InProcessEmulator, creds: dict[str, str], other_creds: dict[str, str]
) -> None:
    async with (
        open_client("direct", emulator) as insurance,
        open_client("grpc", emulator) as lending,
    ):
        await configure(insurance, creds)
        await configure(lending, other_creds)
        a = claims(emulator, await insurance.read("creds/producer"))
        b = claims(emulator, await lending.read("creds/producer"))
        assert a["sub"] == creds["clientID"]
        assert b["sub"] == other_creds["clientID"]
        assert calls(emulator) == 2
        await insurance.delete("roles/producer")
        assert (await insurance.read("creds/producer")).status == 400
        assert (await lending.read("creds/producer")).status == 200
        assert calls(emulator) == 2  # lending's token was still cached


# ----------------------------------------------------------------------------------- reuse


async def test_repeated_reads_reach_skyflow_once(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    tokens = {digest((await client.read("creds/producer")).data["access_token"]) for _ in range(5)}
    assert len(tokens) == 1
    assert calls(emulator) == 1


async def test_tokens_are_kept_per_role_and_canonical_ctx(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    a1 = await client.write("creds/producer", {"ctx": {"a": 1, "b": 2}})
    a2 = await client.write("creds/producer", {"ctx": {"b": 2, "a": 1}})
    assert digest(a1.data["access_token"]) == digest(a2.data["access_token"])
    s1 = await client.read("creds/producer", {"ctx": "user"})
    s2 = await client.write("creds/producer", {"ctx": "user"})
    assert digest(s1.data["access_token"]) == digest(s2.data["access_token"])
    other_role = await client.read("creds/consumer-analytics", {"ctx": "user"})
    assert digest(other_role.data["access_token"]) != digest(s1.data["access_token"])
    assert calls(emulator) == 3


async def test_cache_tokens_false_reaches_skyflow_every_time(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.write("roles/producer", {"cache_tokens": False})
    tokens = {digest((await client.read("creds/producer")).data["access_token"]) for _ in range(3)}
    assert calls(emulator) == 3
    assert len(tokens) == 3
    await client.write("roles/producer", {"cache_tokens": True})
    for _ in range(3):
        await client.read("creds/producer")
    assert calls(emulator) == 4


async def test_min_remaining_ttl_longer_than_lifetime_remints_every_read(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.token_lifetime = 300  # below the default min_remaining_ttl of 600
    for _ in range(3):
        outcome = await client.read("creds/producer")
        assert 295 <= outcome.data["expires_in"] <= 300
    assert calls(emulator) == 3

    await client.write("roles/producer", {"min_remaining_ttl": "4m"})
    for _ in range(3):
        await client.read("creds/producer")
    assert calls(emulator) == 4


async def test_lru_cap_bounds_memory(
    kind: str, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    async with open_client(kind, emulator, cache_max_entries=3) as client:
        await configure(client, creds)
        emulator.state.reset_stats()
        for user in "abc":
            await client.read("creds/producer", {"ctx": user})
        for user in "abc":  # all held
            await client.read("creds/producer", {"ctx": user})
        assert calls(emulator) == 3
        await client.read("creds/producer", {"ctx": "d"})  # evicts "a", least recently used
        assert calls(emulator) == 4
        for user in "bcd":
            await client.read("creds/producer", {"ctx": user})
        assert calls(emulator) == 4
        await client.read("creds/producer", {"ctx": "a"})  # evicted: minted again
        assert calls(emulator) == 5


# ------------------------------------------------------------------------------ coalescing


async def test_concurrent_cold_reads_make_one_upstream_call(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(latency=0.1))
    outcomes = await asyncio.gather(*(client.read("creds/producer") for _ in range(50)))
    assert [o.status for o in outcomes] == [200] * 50
    assert len({digest(o.data["access_token"]) for o in outcomes}) == 1
    assert calls(emulator) == 1


async def test_coalesced_failure_reaches_every_waiter_and_is_not_cached(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(latency=0.3, reject=True))
    outcomes = await asyncio.gather(*(client.read("creds/producer") for _ in range(50)))
    assert [o.status for o in outcomes] == [502] * 50
    assert calls(emulator) == 1
    emulator.state.reset_faults()
    retried = await client.read("creds/producer")
    assert retried.status == 200
    assert calls(emulator) == 2


async def test_coalesced_unavailability_is_retried_once_for_all(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(latency=0.1, fail_status=503))
    outcomes = await asyncio.gather(*(client.read("creds/producer") for _ in range(20)))
    assert [o.status for o in outcomes] == [503] * 20
    assert calls(emulator) == POLICY.max_attempts


# ---------------------------------------------------------------------------- invalidation


async def test_role_write_invalidates_its_tokens(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    first = await client.read("creds/producer")
    other = await client.read("creds/consumer-analytics")
    await client.write("roles/producer", {"role_ids": "r3,r4"})
    second = await client.read("creds/producer")
    assert calls(emulator) == 3
    assert claims(emulator, second)["scope"] == ["r3", "r4"]
    assert digest(second.data["access_token"]) != digest(first.data["access_token"])
    # another role's token is kept
    again = await client.read("creds/consumer-analytics")
    assert digest(again.data["access_token"]) == digest(other.data["access_token"])
    assert calls(emulator) == 3
    # even a write that changes nothing drops the role's tokens
    await client.write("roles/producer", {"description": "same ids"})
    await client.read("creds/producer")
    assert calls(emulator) == 4


async def test_role_delete_and_recreate(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.read("creds/producer")
    await client.delete("roles/producer")
    assert (await client.read("creds/producer")).status == 400
    await client.write("roles/producer", {"role_ids": "r9"})
    outcome = await client.read("creds/producer")
    assert claims(emulator, outcome)["scope"] == ["r9"]
    assert calls(emulator) == 2


@pytest.mark.parametrize("validate", [False, True])
async def test_config_rotation_is_visible_on_the_next_read(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    other_creds: dict[str, str],
    validate: bool,
) -> None:
    before = await client.read("creds/producer")
    assert claims(emulator, before)["sub"] == creds["clientID"]
    written = await client.write(
        "config", {"credentials_json": other_creds, "validate_credentials": validate}
    )
    assert written.status == 200
    after = await client.read("creds/producer")
    assert claims(emulator, after)["sub"] == other_creds["clientID"]
    assert calls(emulator) == (3 if validate else 2)


async def test_config_metadata_write_also_drops_tokens(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.read("creds/producer")
    await client.write("config", {"description": "changed"})
    await client.read("creds/producer")
    assert calls(emulator) == 2


async def test_config_delete_drops_tokens(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    await client.read("creds/producer")
    await client.delete("config")
    outcome = await client.read("creds/producer")
    assert outcome.status == 400
    assert "config" in outcome.errors[0]
    await client.write("config", {"credentials_json": creds, "validate_credentials": False})
    assert (await client.read("creds/producer")).status == 200
    assert calls(emulator) == 2


async def test_invalidate_config_reloads_and_drops_tokens(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    creds: dict[str, str],
    other_creds: dict[str, str],
) -> None:
    first = await client.read("creds/producer")
    assert claims(emulator, first)["sub"] == creds["clientID"]
    # another node rotates the account: storage changes, then the host says so
    await store.save_config(
        client.storage,
        ConfigEntry(
            credentials_type="json",
            credentials_json=json.dumps(other_creds),
            client_id=other_creds["clientID"],
            key_id=other_creds["keyID"],
            token_uri=other_creds["tokenURI"],
            version=2,
        ),
    )
    await invalidate(client, "config")
    second = await client.read("creds/producer")
    assert claims(emulator, second)["sub"] == other_creds["clientID"]
    assert calls(emulator) == 2
    assert (await client.read("config")).data["version"] == 2


async def test_invalidate_config_without_change_still_drops_tokens(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.read("creds/producer")
    await invalidate(client, "config")
    await client.read("creds/producer")
    assert calls(emulator) == 2


async def test_invalidate_role_reloads_and_drops_only_its_tokens(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.read("creds/producer")
    other = await client.read("creds/consumer-analytics")
    await store.save_role(client.storage, RoleEntry(name="producer", role_ids=["r7"]))
    await invalidate(client, "roles/producer")
    outcome = await client.read("creds/producer")
    assert claims(emulator, outcome)["scope"] == ["r7"]
    again = await client.read("creds/consumer-analytics")
    assert digest(again.data["access_token"]) == digest(other.data["access_token"])
    assert calls(emulator) == 3


async def test_invalidate_deleted_role(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.read("creds/producer")
    await client.storage.delete("roles/producer")
    await invalidate(client, "roles/producer")
    assert (await client.read("creds/producer")).status == 400


async def test_config_write_during_an_inflight_mint_is_honoured(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    other_creds: dict[str, str],
) -> None:
    """Issue 4: "A rotated credential is never used to serve a token minted with the old one
    once the write returns." A read that starts after the config write returned must not join
    a mint that started before it (with the old account)."""
    emulator.state.set_faults(Faults(latency=0.3))
    early = asyncio.create_task(client.read("creds/producer"))
    await wait_for_calls(emulator, 1)  # the old account's exchange is under way
    written = await client.write(
        "config", {"credentials_json": other_creds, "validate_credentials": False}
    )
    assert written.status == 200
    late = await client.read("creds/producer")
    await early
    assert claims(emulator, late)["sub"] == other_creds["clientID"]


async def test_role_write_during_an_inflight_mint_is_honoured(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    """Issue 4: "a role or config change is visible on the very next read", even while a mint
    for the old role definition is still in flight."""
    emulator.state.set_faults(Faults(latency=0.3))
    early = asyncio.create_task(client.read("creds/producer"))
    await wait_for_calls(emulator, 1)
    assert (await client.write("roles/producer", {"role_ids": "r5"})).status == 200
    late = await client.read("creds/producer")
    await early
    assert claims(emulator, late)["scope"] == ["r5"]


async def test_token_minted_across_a_write_is_not_cached(
    client: PluginTestClient,
    emulator: InProcessEmulator,
    other_creds: dict[str, str],
) -> None:
    """The early read's token (old account) must not be stored once the write changed the
    config: later reads get the new account."""
    emulator.state.set_faults(Faults(latency=0.2))
    early = asyncio.create_task(client.read("creds/producer"))
    await wait_for_calls(emulator, 1)
    await client.write("config", {"credentials_json": other_creds, "validate_credentials": False})
    await early
    emulator.state.reset_faults()
    for _ in range(2):
        later = await client.read("creds/producer")
        assert claims(emulator, later)["sub"] == other_creds["clientID"]


@dataclass
class GatedView(StaticSystemView):
    """A SystemView whose entity lookups wait for ``gate`` (a slow identity store)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def entity_info(self, entity_id: str) -> Entity | None:
        self.entered.set()
        await self.gate.wait()
        return await super().entity_info(entity_id)


async def test_config_write_during_the_identity_lookup_is_honoured(
    emulator: InProcessEmulator, creds: dict[str, str], other_creds: dict[str, str]
) -> None:
    """A read that loaded the old config, then waited on the caller's identity while the
    config was rotated, must not leave a token of the old account in the cache: reads after
    the write returned must get the new account (issue 4). Direct driver only: the gRPC
    driver's host side answers identity from the view's data, not its methods."""
    view = GatedView(entities={"ent-1": Entity(id="ent-1", name="alice")})
    async with open_client("direct", emulator, system_view=view) as client:
        await configure(client, creds)
        role = {
            "role_ids": "r1",
            "ctx_mode": "none",
            "ctx_template": {"user": "{{identity.entity.name}}"},
        }
        assert (await client.write("roles/per-user", role)).status == 200
        early = asyncio.create_task(client.read("creds/per-user", entity_id="ent-1"))
        await asyncio.wait_for(view.entered.wait(), 2.0)
        written = await client.write(
            "config", {"credentials_json": other_creds, "validate_credentials": False}
        )
        assert written.status == 200
        view.gate.set()
        await early
        later = await client.read("creds/per-user", entity_id="ent-1")
        assert claims(emulator, later)["sub"] == other_creds["clientID"]


# ---------------------------------------------------------------------- upstream trouble


async def test_one_500_is_retried_into_a_200(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(fail_status=500, fail_count=1))
    outcome = await client.read("creds/producer")
    assert outcome.status == 200
    assert calls(emulator) == 2
    assert emulator.state.failures == 1


async def test_one_429_with_retry_after_is_retried_into_a_200(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(fail_status=429, fail_count=1, retry_after=0.3))
    started = time.monotonic()
    outcome = await client.read("creds/producer")
    elapsed = time.monotonic() - started
    assert outcome.status == 200
    assert calls(emulator) == 2
    assert elapsed >= 0.3  # Retry-After honoured, not the (much shorter) backoff


async def test_429_with_retry_after_beyond_the_deadline_is_503_at_once(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(fail_status=429, retry_after=30))
    started = time.monotonic()
    outcome = await client.read("creds/producer")
    assert outcome.status == 503
    assert time.monotonic() - started < POLICY.deadline
    assert calls(emulator) == 1


async def test_persistent_5xx_is_503_after_retries(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(fail_status=502))
    outcome = await client.read("creds/producer")
    assert outcome.status == 503
    assert calls(emulator) == POLICY.max_attempts
    assert "502" in outcome.errors[0]
    assert no_token_text(outcome)


async def test_rejection_is_502_with_message_and_request_id_and_not_retried(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(reject=True))
    outcome = await client.read("creds/producer")
    assert outcome.status == 502
    assert calls(emulator) == 1
    rejection = emulator.state.rejections[-1]
    assert "rejected" in outcome.errors[0]
    assert rejection.message not in outcome.errors[0]  # Skyflow's own text: the log only
    assert rejection.request_id in outcome.errors[0]
    assert "401" in outcome.errors[0]
    assert no_token_text(outcome)


async def test_unknown_account_is_502(
    client: PluginTestClient, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    """Skyflow refusing an account it does not know (a real 401 from verification)."""
    ghost = {**creds, "clientID": "0" * 32}
    await client.write("config", {"credentials_json": ghost, "validate_credentials": False})
    outcome = await client.read("creds/producer")
    assert outcome.status == 502
    assert "rejected (HTTP 401" in outcome.errors[0]
    assert calls(emulator) == 1


async def test_hanging_skyflow_is_503_within_the_deadline(
    kind: str, emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    policy = ExchangePolicy(
        connect_timeout=0.5, read_timeout=0.5, deadline=0.5, backoff_base=0.01, backoff_max=0.02
    )
    async with open_client(kind, emulator, policy=policy) as client:
        await configure(client, creds)
        emulator.state.set_faults(Faults(latency=5.0))
        started = time.monotonic()
        outcome = await client.read("creds/producer")
        elapsed = time.monotonic() - started
        assert outcome.status == 503
        assert elapsed < policy.deadline + SLACK
        assert no_token_text(outcome)


async def test_skyflow_down_serves_a_still_valid_cached_token_with_a_warning(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.token_lifetime = 300  # below min_remaining_ttl: every read tries to re-mint
    first = await client.read("creds/producer")
    exp = claims(emulator, first)["exp"]
    emulator.state.set_faults(Faults(fail_status=503))
    second = await client.read("creds/producer")
    assert second.status == 200
    assert digest(second.data["access_token"]) == digest(first.data["access_token"])
    assert any("Skyflow is unavailable" in w for w in second.warnings)
    assert abs(second.data["expires_in"] - (exp - time.time())) <= 2
    assert calls(emulator) == 1 + POLICY.max_attempts
    # once Skyflow is back, a fresh token replaces it
    emulator.state.reset_faults()
    third = await client.read("creds/producer")
    assert third.warnings == []
    assert digest(third.data["access_token"]) != digest(first.data["access_token"])


async def test_skyflow_down_without_a_cached_token_is_503(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    emulator.state.set_faults(Faults(fail_status=503))
    outcome = await client.read("creds/producer")
    assert outcome.status == 503
    assert "failing (HTTP 503" in outcome.errors[0]


async def test_skyflow_down_with_cache_off_is_503(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.write("roles/producer", {"cache_tokens": False})
    assert (await client.read("creds/producer")).status == 200
    emulator.state.set_faults(Faults(fail_status=503))
    assert (await client.read("creds/producer")).status == 503


async def test_rejection_does_not_serve_a_stale_token(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    """A stale token is a fallback for an outage, not for a revoked account."""
    emulator.state.token_lifetime = 300
    assert (await client.read("creds/producer")).status == 200
    emulator.state.set_faults(Faults(reject=True))
    assert (await client.read("creds/producer")).status == 502
