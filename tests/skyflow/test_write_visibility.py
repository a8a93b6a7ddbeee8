"""A write takes effect when it returns (issue 11, item 3), and per-caller memory is bounded.

Each test interleaves a read and a write deterministically: storage, identity lookups and
mints are gated with asyncio Events, so the write lands exactly while the read waits.
``settle`` only yields to the event loop (no wall-clock wait): every task that can run
runs until it blocks on something the test controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_vault_plugin.skyflow import mount as mount_module
from skyflow_vault_plugin.skyflow import storage as store
from skyflow_vault_plugin.skyflow.backend import build_backend
from skyflow_vault_plugin.skyflow.cache import ByteBudget
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.mount import EngineSettings, MountState
from skyflow_vault_plugin.skyflow.responses import IssuedToken
from skyflow_vault_plugin.skyflow.storage import ConfigEntry, RoleEntry
from tests.skyflow.conftest import token_claims
from vault_plugin_sdk.framework import BackendConfig, Entity, StaticSystemView
from vault_plugin_sdk.framework.storage import StorageEntry
from vault_plugin_sdk.testing import DirectDriver, InMemoryStorage, PluginTestClient

POLICY = ExchangePolicy(connect_timeout=1.0, read_timeout=1.0, deadline=2.0, max_attempts=1)


async def settle() -> None:
    """Let every runnable task run until it blocks (event-loop turns, not time)."""
    for _ in range(200):
        await asyncio.sleep(0)


class GatedStorage(InMemoryStorage):
    """In-memory storage where one ``get`` or ``put`` of a key can be held at a gate.

    A held ``get`` has already read its value (it is in flight, like a storage RPC whose
    answer is on the wire); a held ``put`` has not written yet.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[tuple[str, str], tuple[asyncio.Event, asyncio.Event]] = {}

    def gate(self, operation: str, key: str) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold the next ``operation`` on ``key``: returns (entered, release)."""
        events = (asyncio.Event(), asyncio.Event())
        self.gates[(operation, key)] = events
        return events

    async def _pass(self, operation: str, key: str) -> None:
        events = self.gates.pop((operation, key), None)
        if events is not None:
            entered, release = events
            entered.set()
            await release.wait()

    async def get(self, key: str) -> StorageEntry | None:
        value = await super().get(key)
        await self._pass("get", key)
        return value

    async def put(self, entry: StorageEntry) -> None:
        await self._pass("put", entry.key)
        await super().put(entry)


@dataclass
class GatedView(StaticSystemView):
    """A SystemView whose next entity lookup waits for ``release``."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def entity_info(self, entity_id: str) -> Entity | None:
        if not self.release.is_set():
            self.entered.set()
            await self.release.wait()
        return await super().entity_info(entity_id)


@dataclass
class Mount:
    client: PluginTestClient
    engine: MountState
    storage: GatedStorage


@contextlib.asynccontextmanager
async def open_mount(
    emulator: InProcessEmulator,
    view: StaticSystemView | None = None,
    credentials_dir: Path | None = None,
) -> AsyncIterator[Mount]:
    storage = GatedStorage()
    settings = EngineSettings(
        transport=emulator.transport(),
        policy=POLICY,
        budget=ByteBudget(),
        allowed_token_hosts=TokenHosts.parse("emulator.test"),
        credentials_dir=str(credentials_dir) if credentials_dir else None,
    )
    config = BackendConfig(storage=storage, system_view=view or StaticSystemView())
    engine = MountState(config, settings)
    backend = build_backend(engine, config)
    await backend.initialize()
    try:
        client = PluginTestClient(DirectDriver(backend, storage), mount_point="skyflow/a/")
        yield Mount(client, engine, storage)
    finally:
        await backend.cleanup()


def subject(emulator: InProcessEmulator, token: object) -> str:
    return str(token_claims(emulator, token)["sub"])


def scope(emulator: InProcessEmulator, token: object) -> list[str]:
    return list(token_claims(emulator, token)["scope"])


async def stored_role(storage: InMemoryStorage, name: str, role_ids: list[str]) -> None:
    """A role written by another node (this node never loaded it)."""
    await store.save_role(storage, RoleEntry(name=name, role_ids=role_ids))


def json_config(creds: dict[str, str], version: int) -> ConfigEntry:
    return ConfigEntry(credentials_type="json", credentials_json=json.dumps(creds), version=version)


# ------------------------------------------------------------- loads checked by generation


@pytest.mark.parametrize(
    ("key", "refusal"),
    [("roles/producer", "role 'producer' does not exist"), ("config", "not configured")],
    ids=["role", "config"],
)
async def test_an_object_deleted_during_its_storage_read_stays_deleted(
    emulator: InProcessEmulator, creds: dict[str, str], key: str, refusal: str
) -> None:
    async with open_mount(emulator) as mount:
        await store.save_config(mount.storage, json_config(creds, 1))
        await stored_role(mount.storage, "producer", ["r1"])
        entered, release = mount.storage.gate("get", key)
        reading = asyncio.create_task(mount.client.read(key))
        await entered.wait()  # the read has the old object on the wire
        assert (await mount.client.delete(key)).status == 204
        release.set()
        await reading  # overlapped the delete: either answer is fine for it
        assert (await mount.client.read(key)).status == 404
        refused = await mount.client.read("creds/producer")
        assert refused.status == 400
        assert refusal in refused.errors[0]


async def test_a_role_invalidated_during_its_storage_read_is_reloaded(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    """A standby: the read's answer is on the wire when the active node's write arrives as
    InvalidateKey; the next read must load the new role, not keep the one in flight."""
    async with open_mount(emulator) as mount:
        await store.save_config(mount.storage, json_config(creds, 1))
        await stored_role(mount.storage, "producer", ["r1"])
        entered, release = mount.storage.gate("get", "roles/producer")
        reading = asyncio.create_task(mount.client.read("roles/producer"))
        await entered.wait()
        await stored_role(mount.storage, "producer", ["r9"])
        await mount.client.driver.backend.invalidate("roles/producer")  # type: ignore[union-attr]
        release.set()
        await reading
        assert (await mount.client.read("roles/producer")).data["role_ids"] == ["r9"]


# -------------------------------------------------------------- mints keyed by generation


async def test_a_read_after_a_role_write_never_joins_a_mint_of_the_old_role(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    """The early read loaded the role (r1), waited on the caller's identity while the role
    was rewritten (r5), then started its mint. A read that starts after the write returned
    must not share that mint."""
    view = GatedView(entities={"ent-1": Entity(id="ent-1", name="alice")})
    async with open_mount(emulator, view) as mount:
        client, engine = mount.client, mount.engine
        written = await client.write(
            "config", {"credentials_json": creds, "validate_credentials": False}
        )
        assert written.status == 200
        role = {
            "role_ids": "r1",
            "ctx_mode": "none",
            "ctx_template": {"user": "{{identity.entity.name}}"},
        }
        assert (await client.write("roles/per-user", role)).status == 200

        mint_entered, mint_release = asyncio.Event(), asyncio.Event()
        flights: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
        real_mint, real_flight = engine.mint, engine.cache.single_flight

        async def gated_mint(account: Any, role_ids: list[str], ctx: object) -> IssuedToken:
            if not mint_entered.is_set():
                mint_entered.set()
                await mint_release.wait()
            return await real_mint(account, role_ids, ctx)

        async def counted_flight(
            key: Any, mint: Callable[[], Awaitable[IssuedToken]], *args: Any
        ) -> tuple[IssuedToken, bool]:
            next(e for e in flights if not e.is_set()).set()
            return await real_flight(key, mint, *args)

        engine.mint = gated_mint  # type: ignore[method-assign]
        engine.cache.single_flight = counted_flight  # type: ignore[method-assign,assignment]

        early = asyncio.create_task(client.read("creds/per-user", entity_id="ent-1"))
        await view.entered.wait()  # the early read holds the old role
        assert (await client.write("roles/per-user", {"role_ids": "r5"})).status == 200
        view.release.set()
        await mint_entered.wait()  # the early read's mint (r1) is under way
        late = asyncio.create_task(client.read("creds/per-user", entity_id="ent-1"))
        await flights[1].wait()  # the late read has asked to share or start a mint
        mint_release.set()
        early_outcome, late_outcome = await asyncio.gather(early, late)
        assert early_outcome.status == late_outcome.status == 200
        assert scope(emulator, late_outcome.data["access_token"]) == ["r5"]


# ----------------------------------------------------------------------- per-name locks


async def test_concurrent_role_updates_keep_both_fields(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    async with open_mount(emulator) as mount:
        client = mount.client
        assert (await client.write("roles/producer", {"role_ids": "r1"})).status == 200
        entered, release = mount.storage.gate("put", "roles/producer")
        first = asyncio.create_task(client.write("roles/producer", {"description": "first"}))
        await entered.wait()  # the first update holds its merged entry, not yet saved
        second = asyncio.create_task(client.write("roles/producer", {"tags": "second"}))
        await settle()
        release.set()
        outcomes = await asyncio.gather(first, second)
        assert [o.status for o in outcomes] == [200, 200]
        role = (await client.read("roles/producer")).data
        assert role["description"] == "first"
        assert role["tags"] == ["second"]
        assert len(mount.engine.locks) == 0  # no lock outlives its users


async def test_concurrent_config_writes_get_distinct_versions(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    async with open_mount(emulator) as mount:
        client = mount.client
        base = {"credentials_json": creds, "validate_credentials": False}
        assert (await client.write("config", base)).data["version"] == 1
        entered, release = mount.storage.gate("put", "config")
        first = asyncio.create_task(client.write("config", {"description": "first"}))
        await entered.wait()
        second = asyncio.create_task(client.write("config", {"tags": "second"}))
        await settle()
        release.set()
        outcomes = await asyncio.gather(first, second)
        assert sorted(o.data["version"] for o in outcomes) == [2, 3]
        config = (await client.read("config")).data
        assert config["version"] == 3
        assert (config["description"], config["tags"]) == ("first", ["second"])


# --------------------------------------------------------- the account, by key fingerprint


async def test_an_invalidated_account_does_not_come_back_under_a_reused_version(
    emulator: InProcessEmulator, creds: dict[str, str], other_creds: dict[str, str]
) -> None:
    """Another node deletes the config and writes a new account, which starts at version 1
    again. A read that loaded the old config before the InvalidateKey parses the old key
    after it; the next read must still use the new account."""
    view = GatedView(entities={"ent-1": Entity(id="ent-1", name="alice")})
    async with open_mount(emulator, view) as mount:
        client, storage = mount.client, mount.storage
        written = await client.write(
            "config", {"credentials_json": creds, "validate_credentials": False}
        )
        assert written.data["version"] == 1
        role = {
            "role_ids": "r1",
            "ctx_mode": "none",
            "ctx_template": {"user": "{{identity.entity.name}}"},
        }
        assert (await client.write("roles/per-user", role)).status == 200
        assert (await client.write("roles/producer", {"role_ids": "r1"})).status == 200

        early = asyncio.create_task(client.read("creds/per-user", entity_id="ent-1"))
        await view.entered.wait()  # holds the old config (version 1, old key)
        await storage.delete("config")
        await store.save_config(storage, json_config(other_creds, 1))
        await client.driver.backend.invalidate("config")  # type: ignore[union-attr]
        view.release.set()
        assert (await early).status == 200
        later = await client.read("creds/producer")
        assert subject(emulator, later.data["access_token"]) == other_creds["clientID"]


async def test_a_credentials_file_holding_another_account_drops_the_tokens(
    emulator: InProcessEmulator,
    creds: dict[str, str],
    other_creds: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount_dir = tmp_path / "skyflow" / "a"  # the mount's directory under SKYFLOW_CREDENTIALS_DIR
    mount_dir.mkdir(parents=True)
    key_file = mount_dir / "sa.json"
    key_file.write_text(json.dumps(creds))
    async with open_mount(emulator, credentials_dir=tmp_path) as mount:
        client = mount.client
        written = await client.write(
            "config", {"credentials_file_path": str(key_file), "validate_credentials": False}
        )
        assert written.status == 200
        for name in ("producer", "consumer"):
            assert (await client.write(f"roles/{name}", {"role_ids": "r1"})).status == 200
        first = await client.read("creds/producer")
        assert subject(emulator, first.data["access_token"]) == creds["clientID"]

        key_file.write_text(json.dumps(other_creds) + " " * 7)
        stat = key_file.stat()
        os.utime(key_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        with caplog.at_level(logging.WARNING):
            switched = await client.read("creds/consumer")  # a mint: notices the new key
        assert subject(emulator, switched.data["access_token"]) == other_creds["clientID"]
        assert any("another service account" in r.getMessage() for r in caplog.records)
        again = await client.read("creds/producer")  # its old token was dropped
        assert subject(emulator, again.data["access_token"]) == other_creds["clientID"]


# ---------------------------------------------------------------------- bounded memory


async def test_unknown_role_names_are_remembered_only_up_to_a_bound(
    emulator: InProcessEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mount_module, "MAX_ABSENT_ROLES", 8, raising=False)
    async with open_mount(emulator) as mount:
        engine = mount.engine
        await stored_role(mount.storage, "real", ["r1"])
        assert await engine.get_role("real") is not None
        for index in range(50):
            assert await engine.get_role(f"ghost-{index}") is None
        remembered = vars(engine)
        names = len(remembered["_roles"]) + len(remembered.get("_absent_roles", {}))
        assert names <= 1 + 8
        # An evicted "absent" name is simply read again.
        await stored_role(mount.storage, "ghost-0", ["r2"])
        found = await engine.get_role("ghost-0")
        assert found is not None
        assert found.role_ids == ["r2"]


async def test_creds_role_name_is_length_limited_like_roles(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    async with open_mount(emulator) as mount:
        outcome = await mount.client.read("creds/" + "a" * 129)
        assert outcome.status == 400
        assert "'name'" in outcome.errors[0]
        assert (await mount.client.read("creds/" + "a" * 128)).status == 400


# ----------------------------------------------------------------------------- standbys


async def test_a_config_write_on_a_standby_is_refused_before_any_token_exchange(
    emulator: InProcessEmulator, creds: dict[str, str]
) -> None:
    """A standby's storage is read-only: the write must fail with the host's read-only
    sentinel (so that the host forwards it to the active node) without minting here."""
    async with open_mount(emulator) as mount:
        mount.storage.read_only = True
        emulator.state.reset_stats()
        refused = await mount.client.write("config", {"credentials_json": creds})
        assert refused.status == 500
        assert "cannot write to readonly storage" in refused.errors[0]
        assert emulator.state.token_calls == 0
        mount.storage.read_only = False
        written = await mount.client.write("config", {"credentials_json": creds})
        assert written.status == 200
        assert emulator.state.token_calls == 1  # the active node validates once
        assert await mount.storage.list("") == ["config"]  # the probe leaves nothing
