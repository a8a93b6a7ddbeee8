"""Per-role ctx policy bound to the caller's Vault identity, inside a real OpenBao.

Issue 8's "done when": two userpass users (alice, bob) log in and map, through entity
aliases, to identity entities with metadata; alice is also in two identity groups and bob in
one. Roles with ``ctx_template``, ``ctx_mode`` ``free``/``restricted``/``none``,
``allowed_ctx_keys`` and ``required_ctx_keys`` show that each user's token carries their own
entity values, that a caller cannot override them, that restricted and none behave as
specified, and that cached tokens are never shared across identities.

Access tokens are only compared through their SHA-256 and never appear in an assertion.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from skyflow_devtools.client import BaoClient, error_text
from skyflow_emulator.process import EmulatorAdmin
from tests.issued import calls, issued, read_creds

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = pytest.mark.e2e

POLICY = "skyflow-creds"
POLICY_HCL = """
path "skyflow/+/creds/*" {
  capabilities = ["read", "update"]
}
"""
TEMPLATE = {
    "user_id": "{{identity.entity.metadata.user_id}}",
    "entity": "{{identity.entity.name}}",
}


# -- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A userpass user logged in, and the entity it maps to."""

    username: str
    entity_id: str
    entity_name: str
    metadata: dict[str, str]
    groups: list[str]
    token: str = field(repr=False)


@dataclass(frozen=True)
class Identities:
    """The userpass mount and its two users."""

    accessor: str
    alice: User
    bob: User


def creds(
    stack: SkyflowStack, user: User | None, mount: str, role: str, ctx: Any = None
) -> httpx.Response:
    """Read ``creds/<role>`` as ``user`` (root when None): GET for a string or no ctx,
    POST for a map."""
    return read_creds(stack.client(user.token if user is not None else None), mount, role, ctx)


def _login(
    client: BaoClient,
    accessor: str,
    username: str,
    metadata: dict[str, str],
    groups: list[str],
) -> User:
    password = secrets.token_urlsafe(16)
    client.create_userpass_user(username, password, [POLICY])
    entity_name = f"{username}-entity"
    entity = client.write("identity/entity", {"name": entity_name, "metadata": metadata})
    entity_id = entity["data"]["id"]
    client.write(
        "identity/entity-alias",
        {"name": username, "canonical_id": entity_id, "mount_accessor": accessor},
    )
    token = client.login_userpass(username, password)
    return User(username, entity_id, entity_name, metadata, groups, token)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def public_key(stack: SkyflowStack) -> str:
    return stack.admin.public_key_pem()


@pytest.fixture(scope="module")
def identities(stack: SkyflowStack) -> Identities:
    """userpass with alice and bob, their entities (with metadata) and groups.

    Tests only read these, so they are made once per module.
    """
    client = stack.client()
    client.enable_userpass()
    accessor = client.read("sys/auth")["data"]["userpass/"]["accessor"]
    client.write_policy(POLICY, POLICY_HCL)
    alice = _login(
        client,
        accessor,
        "alice",
        {"user_id": "u-alice-1001", "region": "eu"},
        ["analysts", "readers"],
    )
    bob = _login(client, accessor, "bob", {"user_id": "u-bob-2002"}, ["readers"])
    members = {"analysts": [alice.entity_id], "readers": [alice.entity_id, bob.entity_id]}
    for group, entity_ids in members.items():
        client.write("identity/group", {"name": group, "member_entity_ids": entity_ids})
    return Identities(accessor, alice, bob)


@dataclass(frozen=True)
class Mount:
    path: str
    client_id: str


@pytest.fixture
def mount(stack: SkyflowStack) -> Mount:
    """A fresh configured mount (no roles)."""
    account = stack.new_account()
    path = stack.mount("skyflow/ctx", credentials=account)
    return Mount(path, account["clientID"])


def write_role(stack: SkyflowStack, mount: Mount, name: str, **fields: Any) -> None:
    stack.client().write(f"{mount.path}/roles/{name}", {"role_ids": "r-1", **fields})


# -- templates -----------------------------------------------------------------------------


def test_each_user_gets_their_own_entity_values(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    write_role(stack, mount, "per-user", ctx_template=TEMPLATE, ctx_mode="none")
    for user in (identities.alice, identities.bob):
        got = issued(stack, public_key, creds(stack, user, mount.path, "per-user"))
        assert got.claims["ctx"] == {
            "user_id": user.metadata["user_id"],
            "entity": user.entity_name,
        }
        assert got.claims["sub"] == mount.client_id


@pytest.mark.parametrize("mode", ["none", "free", "restricted"])
def test_a_caller_cannot_override_templated_keys(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount, mode: str
) -> None:
    extra = {"allowed_ctx_keys": "purpose"} if mode == "restricted" else {}
    write_role(stack, mount, "per-user", ctx_template=TEMPLATE, ctx_mode=mode, **extra)
    alice = identities.alice
    for sent in ({"user_id": "u-bob-2002"}, {"entity": "bob-entity"}):
        message = error_text(creds(stack, alice, mount.path, "per-user", sent), 400)
        (key,) = sent
        assert f"ctx.{key}" in message, mode
    # Nor by a string ctx, in any mode.
    error_text(creds(stack, alice, mount.path, "per-user", "u-bob-2002"), 400)
    # What she does get is her own.
    got = issued(stack, public_key, creds(stack, alice, mount.path, "per-user"))
    assert got.claims["ctx"]["user_id"] == alice.metadata["user_id"]


def test_free_mode_merges_caller_keys_with_templated_ones(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    write_role(stack, mount, "mixed", ctx_template=TEMPLATE, ctx_mode="free")
    bob = identities.bob
    got = issued(stack, public_key, creds(stack, bob, mount.path, "mixed", {"ticket": "T-9"}))
    assert got.claims["ctx"] == {
        "ticket": "T-9",
        "user_id": bob.metadata["user_id"],
        "entity": bob.entity_name,
    }


def test_entity_id_and_alias_name_templates(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    template = {
        "login": f"{{{{identity.entity.aliases.{identities.accessor}.name}}}}",
        "eid": "{{identity.entity.id}}",
        "label": "user-{{identity.entity.metadata.user_id}}",
    }
    write_role(stack, mount, "aliases", ctx_template=template, ctx_mode="none")
    for user in (identities.alice, identities.bob):
        got = issued(stack, public_key, creds(stack, user, mount.path, "aliases"))
        assert got.claims["ctx"] == {
            "login": user.username,
            "eid": user.entity_id,
            "label": f"user-{user.metadata['user_id']}",
        }


def test_group_names_template_resolves_to_a_list(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    write_role(
        stack,
        mount,
        "groups",
        ctx_template={"groups": "{{identity.groups.names}}"},
        ctx_mode="none",
    )
    for user in (identities.alice, identities.bob):
        got = issued(stack, public_key, creds(stack, user, mount.path, "groups"))
        assert sorted(got.claims["ctx"]["groups"]) == sorted(user.groups)
        assert isinstance(got.claims["ctx"]["groups"], list)


def test_root_token_without_an_entity_is_400_explaining_the_missing_identity(
    stack: SkyflowStack, mount: Mount
) -> None:
    write_role(stack, mount, "per-user", ctx_template=TEMPLATE, ctx_mode="none")
    message = error_text(creds(stack, None, mount.path, "per-user"), 400)
    assert "identity" in message
    assert "entity" in message
    assert "ctx." in message  # names the templated key that could not be filled


def test_a_template_that_cannot_be_resolved_for_a_caller_says_which_part(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    write_role(
        stack,
        mount,
        "regional",
        ctx_template={"region": "{{identity.entity.metadata.region}}"},
        ctx_mode="none",
    )
    got = issued(stack, public_key, creds(stack, identities.alice, mount.path, "regional"))
    assert got.claims["ctx"] == {"region": "eu"}
    message = error_text(creds(stack, identities.bob, mount.path, "regional"), 400)
    assert "ctx.region" in message
    assert "metadata" in message
    assert "region" in message


def test_an_unknown_placeholder_is_refused_at_role_write(stack: SkyflowStack, mount: Mount) -> None:
    for template in (
        {"x": "{{identity.entity.email}}"},
        {"x": "no placeholder"},
        {"bad-key": "{{identity.entity.id}}"},
        {"x": "groups: {{identity.groups.names}}"},
    ):
        response = stack.client().request(
            "POST",
            f"{mount.path}/roles/bad",
            json={"role_ids": "r-1", "ctx_template": template},
        )
        assert "ctx_template" in error_text(response, 400)
    assert stack.client().request("GET", f"{mount.path}/roles/bad").status_code == 404


# -- modes ---------------------------------------------------------------------------------


def test_restricted_mode(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    write_role(
        stack,
        mount,
        "restricted",
        ctx_mode="restricted",
        allowed_ctx_keys="purpose",
        required_ctx_keys="purpose",
        ctx_template={"user_id": "{{identity.entity.metadata.user_id}}"},
    )
    alice = identities.alice
    # Missing the required key, with no ctx at all or with an empty map.
    nothing: tuple[dict[str, str] | None, ...] = (None, {})
    for missing in nothing:
        message = error_text(creds(stack, alice, mount.path, "restricted", missing), 400)
        assert "ctx.purpose" in message
    # A key that is not allowed.
    sent = {"purpose": "fraud_review", "channel": "web"}
    assert "ctx.channel" in error_text(creds(stack, alice, mount.path, "restricted", sent), 400)
    # A string is not a map of allowed keys.
    assert "ctx" in error_text(creds(stack, alice, mount.path, "restricted", "purpose"), 400)
    # The allowed key is carried, next to the templated one.
    got = issued(
        stack, public_key, creds(stack, alice, mount.path, "restricted", {"purpose": "audit"})
    )
    assert got.claims["ctx"] == {"purpose": "audit", "user_id": alice.metadata["user_id"]}


def test_restricted_mode_without_a_template_works_for_root_too(
    stack: SkyflowStack, public_key: str, mount: Mount
) -> None:
    write_role(stack, mount, "purpose-only", ctx_mode="restricted", allowed_ctx_keys="purpose,case")
    got = issued(stack, public_key, creds(stack, None, mount.path, "purpose-only", {"case": "7"}))
    assert got.claims["ctx"] == {"case": "7"}
    got = issued(stack, public_key, creds(stack, None, mount.path, "purpose-only"))
    assert "ctx" not in got.claims


def test_none_mode_rejects_any_ctx(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    write_role(stack, mount, "no-ctx", ctx_mode="none")
    for user in (None, identities.bob):
        for sent in ("anything", {"purpose": "x"}):
            assert "ctx" in error_text(creds(stack, user, mount.path, "no-ctx", sent), 400)
        got = issued(stack, public_key, creds(stack, user, mount.path, "no-ctx"))
        assert "ctx" not in got.claims


def test_role_write_refuses_inconsistent_ctx_rules(stack: SkyflowStack, mount: Mount) -> None:
    client = stack.client()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ctx_mode": "sometimes"}, "ctx_mode"),
        ({"ctx_mode": "restricted", "allowed_ctx_keys": "a", "required_ctx_keys": "b"}, "required"),
        ({"ctx_mode": "none", "required_ctx_keys": "a"}, "required_ctx_keys"),
        ({"allowed_ctx_keys": "user_id", "ctx_template": TEMPLATE}, "ctx_template"),
        ({"allowed_ctx_keys": "bad-key"}, "allowed_ctx_keys"),
    ]
    for body, named in cases:
        response = client.request(
            "POST", f"{mount.path}/roles/bad", json={"role_ids": "r-1", **body}
        )
        assert named in error_text(response, 400), body
    assert client.request("GET", f"{mount.path}/roles/bad").status_code == 404


# -- cache isolation -----------------------------------------------------------------------


def test_cached_tokens_are_never_shared_across_identities(
    stack: SkyflowStack,
    public_key: str,
    identities: Identities,
    mount: Mount,
    fresh_emulator: EmulatorAdmin,
) -> None:
    write_role(stack, mount, "per-user", ctx_template=TEMPLATE, ctx_mode="none")
    alice, bob = identities.alice, identities.bob
    before = calls(fresh_emulator, mount.client_id)
    first_a = issued(stack, public_key, creds(stack, alice, mount.path, "per-user"))
    first_b = issued(stack, public_key, creds(stack, bob, mount.path, "per-user"))
    assert first_a.token_sha256 != first_b.token_sha256
    assert first_a.claims["ctx"]["user_id"] == alice.metadata["user_id"]
    assert first_b.claims["ctx"]["user_id"] == bob.metadata["user_id"]
    assert calls(fresh_emulator, mount.client_id) - before == 2
    # Each identity's next reads are served from the cache, still with their own ctx.
    again_a = issued(stack, public_key, creds(stack, alice, mount.path, "per-user"))
    again_b = issued(stack, public_key, creds(stack, bob, mount.path, "per-user"))
    assert again_a.token_sha256 == first_a.token_sha256
    assert again_b.token_sha256 == first_b.token_sha256
    assert again_a.claims["ctx"]["user_id"] == alice.metadata["user_id"]
    assert calls(fresh_emulator, mount.client_id) - before == 2


def test_a_caller_ctx_does_not_collide_with_a_templated_one(
    stack: SkyflowStack, public_key: str, identities: Identities, mount: Mount
) -> None:
    """Bob sending alice's values in a free key never gets alice's cached token."""
    write_role(
        stack,
        mount,
        "mixed",
        ctx_mode="free",
        ctx_template={"user_id": "{{identity.entity.metadata.user_id}}"},
    )
    alice, bob = identities.alice, identities.bob
    a = issued(stack, public_key, creds(stack, alice, mount.path, "mixed"))
    b = issued(
        stack,
        public_key,
        creds(stack, bob, mount.path, "mixed", {"note": alice.metadata["user_id"]}),
    )
    assert a.token_sha256 != b.token_sha256
    assert b.claims["ctx"] == {
        "note": alice.metadata["user_id"],
        "user_id": bob.metadata["user_id"],
    }
