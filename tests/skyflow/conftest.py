"""Shared pieces of the engine's path tests: one in-process Skyflow emulator per module, reset
around each test that asks for it, and a client on one mount, served in-process (``direct``)
and through the plugin's real gRPC service (``grpc``).

A module sets ``POLICY`` and ``MOUNT_POINT`` to change what the ``client`` fixture uses;
``open_client`` builds more clients in a test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_vault_plugin.skyflow.backend import make_factory
from skyflow_vault_plugin.skyflow.cache import DEFAULT_MAX_ENTRIES
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.credentials import ServiceAccount, TokenHosts, parse_credentials
from skyflow_vault_plugin.skyflow.mount import EngineSettings
from vault_plugin_sdk.framework import StaticSystemView, StorageEntry
from vault_plugin_sdk.testing import GrpcDriver, PluginTestClient, open_driver

POLICY = ExchangePolicy(
    connect_timeout=1.0,
    read_timeout=1.0,
    deadline=2.0,
    max_attempts=3,
    backoff_base=0.01,
    backoff_max=0.02,
)
MOUNT_POINT = "skyflow/insurance/"
EMULATOR_HOSTS = TokenHosts.parse("emulator.test")  # the in-process emulator's host


@pytest.fixture(scope="module")
def account(creds: dict[str, str]) -> ServiceAccount:
    """``creds`` parsed: the service account that signs assertions."""
    return parse_credentials(creds)


@pytest.fixture(params=["direct", "grpc"])
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@contextlib.asynccontextmanager
async def open_client(
    kind: str,
    emulator: InProcessEmulator,
    credentials_dir: Path | None = None,
    *,
    policy: ExchangePolicy = POLICY,
    mount_point: str = MOUNT_POINT,
    cache_max_entries: int = DEFAULT_MAX_ENTRIES,
    system_view: StaticSystemView | None = None,
) -> AsyncIterator[PluginTestClient]:
    """A client on a fresh mount whose Skyflow is ``emulator`` (allowed as a token host),
    reading credentials files under ``credentials_dir`` when given."""
    settings = EngineSettings(
        transport=emulator.transport(),
        policy=policy,
        cache_max_entries=cache_max_entries,
        allowed_token_hosts=EMULATOR_HOSTS,
        credentials_dir=str(credentials_dir) if credentials_dir else None,
    )
    async with open_driver(kind, make_factory(settings), system_view=system_view) as driver:
        yield PluginTestClient(driver, mount_point=mount_point)


def token_claims(emulator: InProcessEmulator, token: object) -> dict[str, Any]:
    """The claims of an access token that ``emulator`` issued, verified (RS256, its URL as
    the audience)."""
    assert isinstance(token, str)
    claims: dict[str, Any] = jwt.decode(
        token, emulator.state.public_key_pem(), algorithms=["RS256"], audience=emulator.base_url
    )
    return claims


def snake_case(creds: Mapping[str, Any]) -> dict[str, Any]:
    """Service-account credentials with the snake_case keys the engine also accepts."""
    names = {
        "clientID": "client_id",
        "clientName": "client_name",
        "keyID": "key_id",
        "tokenURI": "token_uri",
        "privateKey": "private_key",
    }
    return {names[k]: v for k, v in creds.items()}


async def invalidate(client: PluginTestClient, key: str) -> None:
    """Deliver the host's InvalidateKey (over gRPC, or straight to the backend)."""
    driver = client.driver
    if isinstance(driver, GrpcDriver):
        await driver.invalidate(key)
    else:
        await driver.backend.invalidate(key)


async def rewrite_stored_config(client: PluginTestClient, **changes: Any) -> None:
    """Change the stored config behind the mount's back (as another node's write would) and
    deliver the InvalidateKey that makes the mount reload it."""
    entry = await client.storage.get("config")
    assert entry is not None
    await client.storage.put(
        StorageEntry.from_json("config", {**entry.json(), **changes}, seal_wrap=True)
    )
    await invalidate(client, "config")


@pytest.fixture
def credentials_dir() -> Path | None:
    """The client's ``SKYFLOW_CREDENTIALS_DIR``; None leaves file mode off. A module that
    tests file mode overrides this fixture."""
    return None


@pytest.fixture
async def client(
    request: pytest.FixtureRequest,
    kind: str,
    emulator: InProcessEmulator,
    credentials_dir: Path | None,
) -> AsyncIterator[PluginTestClient]:
    policy = getattr(request.module, "POLICY", POLICY)
    mount_point = getattr(request.module, "MOUNT_POINT", MOUNT_POINT)
    async with open_client(
        kind, emulator, credentials_dir, policy=policy, mount_point=mount_point
    ) as test_client:
        yield test_client
