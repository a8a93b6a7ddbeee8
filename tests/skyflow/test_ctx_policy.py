"""Per-role ctx policy: ``resolve_ctx`` / ``check_template`` units, then the engine with callers
of different identities (through both drivers, the gRPC one asking the host's SystemView)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_vault_plugin.skyflow.backend import make_factory
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.ctx_policy import CtxPolicy, Identity, check_template, resolve_ctx
from skyflow_vault_plugin.skyflow.errors import InvalidContext
from skyflow_vault_plugin.skyflow.mount import EngineSettings
from tests.skyflow.conftest import EMULATOR_HOSTS, token_claims
from vault_plugin_sdk.framework import Alias, Entity, Group, StaticSystemView
from vault_plugin_sdk.testing import Outcome, PluginTestClient, open_driver

USERPASS = "auth_userpass_1a2b3c"
OIDC = "auth_oidc_9f8e7d"

ALICE = Entity(
    id="ent-alice",
    name="alice",
    metadata={"employee_id": "E-100", "region": "eu"},
    aliases=(
        Alias(USERPASS, "userpass", "alice.login", metadata={"team": "claims"}),
        Alias(OIDC, "oidc", "alice@example.com"),
    ),
)
BOB = Entity(
    id="ent-bob",
    name="bob",
    metadata={"employee_id": "E-200"},
    aliases=(Alias(USERPASS, "userpass", "bob.login"),),
)
ALICE_ID = Identity(entity=ALICE, groups=(Group("g2", "underwriters"), Group("g1", "analysts")))
NOBODY = Identity(entity=None)


def loader(identity: Identity) -> Any:
    async def load() -> Identity:
        return identity

    return load


async def never_called() -> Identity:
    raise AssertionError("the identity must not be loaded for this policy")


async def resolve(policy: CtxPolicy, given: object, identity: Identity = ALICE_ID) -> Any:
    return await resolve_ctx(policy, given, loader(identity))


async def refused(
    policy: CtxPolicy, given: object, identity: Identity = ALICE_ID
) -> InvalidContext:
    with pytest.raises(InvalidContext) as caught:
        await resolve(policy, given, identity)
    return caught.value


# ------------------------------------------------------------------------------ modes


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ({}, None),
        ("user-1", "user-1"),
        ({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 2]}}),
    ],
)
async def test_free_mode_passes_the_ctx_through(given: object, expected: object) -> None:
    assert await resolve_ctx(CtxPolicy(), given, never_called) == expected


async def test_restricted_mode_accepts_allowed_keys_only() -> None:
    policy = CtxPolicy(mode="restricted", allowed_keys=frozenset({"purpose", "region"}))
    assert await resolve_ctx(policy, {"purpose": "audit"}, never_called) == {"purpose": "audit"}
    assert await resolve_ctx(policy, None, never_called) is None
    error = await refused(policy, {"purpose": "audit", "user": "someone-else"})
    assert error.field == "ctx.user"
    assert "not allowed" in error.message


async def test_restricted_mode_refuses_a_string() -> None:
    policy = CtxPolicy(mode="restricted", allowed_keys=frozenset({"purpose"}))
    error = await refused(policy, "purpose")
    assert error.field == "ctx"
    assert "map" in error.message


@pytest.mark.parametrize("given", ["x", {"a": 1}, 5, True])
async def test_none_mode_refuses_any_ctx(given: object) -> None:
    error = await refused(CtxPolicy(mode="none"), given)
    assert error.field == "ctx"
    assert "none" in error.message


@pytest.mark.parametrize("given", [None, "", " ", {}])
async def test_none_mode_accepts_no_ctx(given: object) -> None:
    assert await resolve_ctx(CtxPolicy(mode="none"), given, never_called) is None


@pytest.mark.parametrize("mode", ["free", "restricted"])
async def test_required_keys(mode: str) -> None:
    policy = CtxPolicy(
        mode=mode,
        allowed_keys=frozenset({"purpose", "region"}),
        required_keys=frozenset({"purpose"}),
    )
    assert await resolve(policy, {"purpose": "x"}) == {"purpose": "x"}
    for given in (None, {"region": "eu"}):
        error = await refused(policy, given)
        assert error.field == "ctx.purpose"
        assert "missing" in error.message


async def test_required_keys_with_a_string_ctx() -> None:
    error = await refused(CtxPolicy(required_keys=frozenset({"purpose"})), "purpose")
    assert error.field == "ctx.purpose"


# -------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{identity.entity.id}}", "ent-alice"),
        ("{{identity.entity.name}}", "alice"),
        ("{{ identity.entity.name }}", "alice"),
        ("{{identity.entity.metadata.employee_id}}", "E-100"),
        (f"{{{{identity.entity.aliases.{USERPASS}.name}}}}", "alice.login"),
        (f"{{{{identity.entity.aliases.{OIDC}.name}}}}", "alice@example.com"),
        (f"{{{{identity.entity.aliases.{USERPASS}.metadata.team}}}}", "claims"),
        ("{{identity.groups.names}}", ["analysts", "underwriters"]),
        ("user-{{identity.entity.name}}", "user-alice"),
        ("{{identity.entity.name}}@{{identity.entity.metadata.region}}", "alice@eu"),
    ],
)
async def test_templates_are_filled_from_the_identity(template: str, expected: object) -> None:
    check_template("v", template)
    policy = CtxPolicy(mode="none", template={"v": template})
    assert await resolve(policy, None) == {"v": expected}


async def test_template_keys_merge_with_sent_keys() -> None:
    policy = CtxPolicy(
        mode="restricted",
        allowed_keys=frozenset({"purpose"}),
        template={"user": "{{identity.entity.metadata.employee_id}}"},
    )
    assert await resolve(policy, {"purpose": "audit"}) == {"purpose": "audit", "user": "E-100"}
    assert await resolve(policy, None) == {"user": "E-100"}


async def test_groups_of_an_entity_without_groups() -> None:
    policy = CtxPolicy(template={"groups": "{{identity.groups.names}}"})
    assert await resolve(policy, None, Identity(entity=BOB)) == {"groups": []}


@pytest.mark.parametrize("mode", ["free", "restricted"])
async def test_override_of_a_templated_key_is_refused(mode: str) -> None:
    policy = CtxPolicy(
        mode=mode,
        allowed_keys=frozenset({"purpose"}) if mode == "restricted" else frozenset(),
        template={"user": "{{identity.entity.id}}"},
    )
    given = {"user": "ent-bob"} if mode == "free" else {"purpose": "x"}
    if mode == "free":
        error = await refused(policy, given)
        assert error.field == "ctx.user"
        assert "identity" in error.message
    else:
        assert await resolve(policy, given) == {"purpose": "x", "user": "ent-alice"}
        error = await refused(policy, {"purpose": "x", "user": "ent-bob"})
        assert error.field == "ctx.user"


async def test_templated_role_refuses_a_string_ctx() -> None:
    policy = CtxPolicy(template={"user": "{{identity.entity.id}}"})
    error = await refused(policy, "ent-bob")
    assert error.field == "ctx"


@pytest.mark.parametrize(
    ("template", "identity", "part"),
    [
        ("{{identity.entity.id}}", NOBODY, "no identity entity"),
        ("{{identity.groups.names}}", NOBODY, "no identity entity"),
        ("{{identity.entity.metadata.cost_center}}", ALICE_ID, "'cost_center'"),
        ("{{identity.entity.aliases.auth_ldap_0.name}}", ALICE_ID, "'auth_ldap_0'"),
        (f"{{{{identity.entity.aliases.{OIDC}.metadata.team}}}}", ALICE_ID, "'team'"),
        (f"{{{{identity.entity.aliases.{OIDC}.name}}}}", Identity(entity=BOB), f"'{OIDC}'"),
    ],
)
async def test_unresolvable_template_names_the_part(
    template: str, identity: Identity, part: str
) -> None:
    policy = CtxPolicy(mode="none", template={"user": template})
    error = await refused(policy, None, identity)
    assert error.field == "ctx.user"
    assert part in error.message
    assert "cannot be resolved" in error.message


async def test_identity_is_loaded_only_for_templates() -> None:
    loads = 0

    async def counting() -> Identity:
        nonlocal loads
        loads += 1
        return ALICE_ID

    await resolve_ctx(
        CtxPolicy(mode="restricted", allowed_keys=frozenset({"a"})), {"a": 1}, counting
    )
    assert loads == 0
    await resolve_ctx(
        CtxPolicy(template={"u": "{{identity.entity.id}}"}, mode="none"), None, counting
    )
    assert loads == 1


def test_needs_identity() -> None:
    assert not CtxPolicy().needs_identity
    assert CtxPolicy(template={"u": "{{identity.entity.id}}"}).needs_identity


# --------------------------------------------------------------------------- check_template


@pytest.mark.parametrize(
    "template",
    [
        "{{identity.entity.id}}",
        "{{identity.entity.name}}",
        "{{identity.entity.metadata.k}}",
        "{{identity.entity.aliases.auth_x_1.name}}",
        "{{identity.entity.aliases.auth_x_1.metadata.k}}",
        "{{identity.groups.names}}",
        " {{identity.groups.names}} ",
        "pre-{{identity.entity.id}}-post",
    ],
)
def test_check_template_accepts(template: str) -> None:
    check_template("key_1", template)


@pytest.mark.parametrize(
    ("key", "template", "message"),
    [
        ("user-id", "{{identity.entity.id}}", "must match"),
        ("", "{{identity.entity.id}}", "must match"),
        ("user", "", "non-empty string"),
        ("user", 7, "non-empty string"),
        ("user", None, "non-empty string"),
        ("user", "static", "no {{identity...}} placeholder"),
        ("user", "{{identity.entity.id", "placeholder"),
        ("user", "{{identity.entity.email}}", "unknown placeholder"),
        ("user", "{{identity.entity.metadata.a.b}}", "unknown placeholder"),
        ("user", "{{identity.entity.metadata.}}", "unknown placeholder"),
        ("user", "{{identity.entity.aliases.acc.id}}", "unknown placeholder"),
        ("user", "{{identity.groups.ids}}", "unknown placeholder"),
        ("user", "{{identity.entity.id}}{{secrets.x}}", "unknown placeholder"),
        ("user", "{{identity.groups.names}},x", "whole value"),
    ],
)
def test_check_template_refuses(key: str, template: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_template(key, template)


# ------------------------------------------------------------------------ through the engine


POLICY = ExchangePolicy(deadline=2.0, max_attempts=2, backoff_base=0.01, backoff_max=0.02)

pytestmark = pytest.mark.usefixtures("fresh_emulator")  # a clean emulator for every test


@pytest.fixture(params=["direct", "grpc"])
async def client(
    request: pytest.FixtureRequest, emulator: InProcessEmulator, creds: dict[str, str]
) -> AsyncIterator[PluginTestClient]:
    view = StaticSystemView(
        entities={ALICE.id: ALICE, BOB.id: BOB},
        groups={ALICE.id: [Group("g1", "analysts")], BOB.id: [Group("g3", "auditors")]},
    )
    settings = EngineSettings(
        transport=emulator.transport(), policy=POLICY, allowed_token_hosts=EMULATOR_HOSTS
    )
    async with open_driver(request.param, make_factory(settings), system_view=view) as driver:
        test_client = PluginTestClient(driver, mount_point="skyflow/insurance/")
        written = await test_client.write(
            "config", {"credentials_json": creds, "validate_credentials": False}
        )
        assert written.status == 200
        yield test_client


def digest(outcome: Outcome) -> str:
    assert outcome.status == 200, outcome.errors
    token: str = outcome.data["access_token"]
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def token_ctx(emulator: InProcessEmulator, outcome: Outcome) -> Any:
    assert outcome.status == 200, outcome.errors
    return token_claims(emulator, outcome.data["access_token"]).get("ctx")


PER_USER = {
    "role_ids": "r1",
    "ctx_mode": "none",
    "ctx_template": {
        "employee": "{{identity.entity.metadata.employee_id}}",
        "login": f"{{{{identity.entity.aliases.{USERPASS}.name}}}}",
        "groups": "{{identity.groups.names}}",
    },
}


async def test_each_entity_gets_its_own_token(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    assert (await client.write("roles/per-user", PER_USER)).status == 200
    alice = await client.read("creds/per-user", entity_id=ALICE.id)
    bob = await client.read("creds/per-user", entity_id=BOB.id)
    assert token_ctx(emulator, alice) == {
        "employee": "E-100",
        "login": "alice.login",
        "groups": ["analysts"],
    }
    assert token_ctx(emulator, bob) == {
        "employee": "E-200",
        "login": "bob.login",
        "groups": ["auditors"],
    }
    assert digest(alice) != digest(bob)
    assert emulator.state.token_calls == 2

    # each gets their own cached token back, never the other's
    for _ in range(2):
        assert digest(await client.read("creds/per-user", entity_id=BOB.id)) == digest(bob)
        assert digest(await client.read("creds/per-user", entity_id=ALICE.id)) == digest(alice)
    assert emulator.state.token_calls == 2


async def test_concurrent_cold_reads_of_two_entities_are_not_coalesced(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.write("roles/per-user", PER_USER)
    outcomes = await asyncio.gather(
        *(client.read("creds/per-user", entity_id=e.id) for e in (ALICE, BOB) * 10)
    )
    alice = {digest(o) for o in outcomes[0::2]}
    bob = {digest(o) for o in outcomes[1::2]}
    assert len(alice) == len(bob) == 1
    assert alice != bob
    assert {token_ctx(emulator, o)["employee"] for o in outcomes[0::2]} == {"E-100"}
    assert {token_ctx(emulator, o)["employee"] for o in outcomes[1::2]} == {"E-200"}
    assert emulator.state.token_calls == 2


async def test_caller_cannot_override_a_templated_key(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.write(
        "roles/free-user",
        {
            "role_ids": "r1",
            "ctx_template": {"employee": "{{identity.entity.metadata.employee_id}}"},
        },
    )
    outcome = await client.write(
        "creds/free-user", {"ctx": {"employee": "E-200"}}, entity_id=ALICE.id
    )
    assert outcome.status == 400
    assert "'ctx.employee'" in outcome.errors[0]
    ok = await client.write("creds/free-user", {"ctx": {"purpose": "x"}}, entity_id=ALICE.id)
    assert token_ctx(emulator, ok) == {"purpose": "x", "employee": "E-100"}
    assert emulator.state.token_calls == 1


async def test_unresolvable_templates_are_400(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.write("roles/per-user", PER_USER)
    no_entity = await client.read("creds/per-user")
    assert no_entity.status == 400
    assert "no identity entity" in no_entity.errors[0]
    unknown = await client.read("creds/per-user", entity_id="ent-ghost")
    assert unknown.status == 400
    await client.write(
        "roles/oidc-user",
        {
            "role_ids": "r1",
            "ctx_mode": "none",
            "ctx_template": {"mail": f"{{{{identity.entity.aliases.{OIDC}.name}}}}"},
        },
    )
    no_alias = await client.read("creds/oidc-user", entity_id=BOB.id)
    assert no_alias.status == 400
    assert "'ctx.mail'" in no_alias.errors[0]
    assert OIDC in no_alias.errors[0]
    assert emulator.state.token_calls == 0


async def test_restricted_and_none_through_the_engine(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.write(
        "roles/restricted",
        {
            "role_ids": "r1",
            "ctx_mode": "restricted",
            "allowed_ctx_keys": "purpose,region",
            "required_ctx_keys": "purpose",
        },
    )
    not_allowed = await client.write("creds/restricted", {"ctx": {"purpose": "x", "user": "u"}})
    assert not_allowed.status == 400
    assert "'ctx.user'" in not_allowed.errors[0]
    missing = await client.write("creds/restricted", {"ctx": {"region": "eu"}})
    assert missing.status == 400
    assert "'ctx.purpose'" in missing.errors[0]
    string = await client.read("creds/restricted", {"ctx": "purpose"})
    assert string.status == 400
    assert "'ctx'" in string.errors[0]
    ok = await client.write("creds/restricted", {"ctx": {"purpose": "audit"}})
    assert token_ctx(emulator, ok) == {"purpose": "audit"}

    await client.write("roles/none", {"role_ids": "r1", "ctx_mode": "none"})
    sent = await client.read("creds/none", {"ctx": "anything"})
    assert sent.status == 400
    assert "'ctx'" in sent.errors[0]
    plain = await client.read("creds/none")
    assert token_ctx(emulator, plain) is None
    assert emulator.state.token_calls == 2


async def test_policy_change_is_enforced_on_the_next_read(
    client: PluginTestClient, emulator: InProcessEmulator
) -> None:
    await client.write("roles/r", {"role_ids": "r1"})
    assert (await client.read("creds/r", {"ctx": "free-text"})).status == 200
    await client.write("roles/r", {"ctx_mode": "none"})
    assert (await client.read("creds/r", {"ctx": "free-text"})).status == 400
