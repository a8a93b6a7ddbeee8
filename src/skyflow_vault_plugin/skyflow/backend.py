"""The Skyflow secrets engine: one instance per mount, holding that mount's state.

State kept in memory, so that a warm ``creds`` read makes no storage or Skyflow call:
the config and its parsed key, the roles, the token cache and the Skyflow client. Every
local write updates it; the host's ``InvalidateKey`` (a write made elsewhere) drops it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vault_plugin_sdk.framework import (
    Backend,
    BackendConfig,
    BackendFactory,
    SpecialPaths,
    Storage,
    SystemView,
)

from .. import __version__
from . import storage as store
from .cache import DEFAULT_MAX_ENTRIES, TokenCache
from .client import ExchangePolicy, IssuedToken, TokenClient
from .credentials import ServiceAccount, load_credentials_file, parse_credentials
from .storage import ConfigEntry, RoleEntry
from .telemetry import Telemetry, process_telemetry

if TYPE_CHECKING:
    import httpx

PLUGIN_VERSION = f"v{__version__}"

BACKEND_HELP = """\
The Skyflow secrets engine issues short-lived Skyflow bearer tokens, so that applications
never hold Skyflow service-account keys.

Write the mount's service account to "config", define roles under "roles/<name>" with the
Skyflow role IDs a token is scoped to, and read "creds/<role>" to get a token with its
expiry. "health" reports whether the mount works, down to Skyflow.
"""

HEALTH_CACHE_KEY = ("", "")  # the unscoped token health checks reuse; no role has this name


@dataclass(frozen=True)
class EngineSettings:
    """Process-wide settings, read once from the environment given at registration.

    ``SKYFLOW_TOKEN_CACHE_MAX_ENTRIES`` caps each mount's token cache (default 10000);
    ``SKYFLOW_REQUEST_DEADLINE`` bounds one token exchange, retries included (seconds,
    default 30, below Vault's 90 s request limit). ``transport`` lets tests put Skyflow
    in-process; ``telemetry`` replaces the process-wide telemetry (see telemetry/).
    """

    cache_max_entries: int = DEFAULT_MAX_ENTRIES
    policy: ExchangePolicy = field(default_factory=ExchangePolicy)
    transport: httpx.AsyncBaseTransport | None = None
    telemetry: Telemetry | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineSettings:
        """Settings from environment variables, falling back to defaults."""
        entries = int(env.get("SKYFLOW_TOKEN_CACHE_MAX_ENTRIES", DEFAULT_MAX_ENTRIES))
        deadline = float(env.get("SKYFLOW_REQUEST_DEADLINE", ExchangePolicy.deadline))
        return cls(cache_max_entries=entries, policy=ExchangePolicy(deadline=deadline))


@dataclass
class _Generations:
    """Counters bumped by every change of what tokens derive from (see cache.py)."""

    config: int = 0
    roles: dict[str, int] = field(default_factory=dict)

    def role(self, name: str) -> int:
        return self.roles.get(name, 0)

    def bump_role(self, name: str) -> None:
        self.roles[name] = self.roles.get(name, 0) + 1


class _Unloaded:
    """Marks state not read from storage yet."""


UNLOADED = _Unloaded()


class SkyflowBackend:
    """One mount of the engine."""

    def __init__(self, config: BackendConfig, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings.from_env(os.environ)
        self.storage: Storage = config.storage
        self.system_view: SystemView = config.system_view
        self.logger = config.logger
        self.cache = TokenCache(self.settings.cache_max_entries)
        self.policy = self.settings.policy
        self.generations = _Generations()
        self.telemetry = self.settings.telemetry or process_telemetry()
        self._config: ConfigEntry | _Unloaded | None = UNLOADED
        self._account: ServiceAccount | None = None
        self._account_source: object = None
        self._roles: dict[str, RoleEntry | None] = {}
        self._client: TokenClient | None = None

    # -- config ----------------------------------------------------------------------------

    async def get_config(self) -> ConfigEntry | None:
        """The mount's config, from memory or storage."""
        if isinstance(self._config, _Unloaded):
            self._config = await store.load_config(self.storage)
        return self._config

    def set_config(self, config: ConfigEntry | None, account: ServiceAccount | None) -> None:
        """Record a config just written (or deleted) and drop every token of the mount."""
        self._config = config
        self._account = account
        self._account_source = _account_source(config) if account else None
        self.generations.config += 1
        self.cache.clear()

    async def account(self, config: ConfigEntry) -> ServiceAccount:
        """The parsed service account. A file is re-read when it changed on disk."""
        source = _account_source(config)
        if config.credentials_type == "file_path":
            path = config.credentials_file_path or ""
            try:
                stat = await asyncio.to_thread(os.stat, path)
                source = (path, stat.st_mtime_ns, stat.st_size)
            except OSError:
                source = (path, None, None)  # load_credentials_file reports the problem
        if self._account is not None and self._account_source == source:
            return self._account
        if config.credentials_type == "file_path":
            account = await asyncio.to_thread(
                load_credentials_file, config.credentials_file_path or ""
            )
        else:
            account = parse_credentials(config.credentials_json or "")
        self._account, self._account_source = account, source
        return account

    # -- roles -----------------------------------------------------------------------------

    async def get_role(self, name: str) -> RoleEntry | None:
        """A role, from memory or storage (absence is remembered too)."""
        if name not in self._roles:
            self._roles[name] = await store.load_role(self.storage, name)
        return self._roles[name]

    def set_role(self, name: str, role: RoleEntry | None) -> None:
        """Record a role just written (or deleted) and drop its tokens."""
        self._roles[name] = role
        self.generations.bump_role(name)
        self.cache.drop_role(name)

    # -- Skyflow ---------------------------------------------------------------------------

    def client(self) -> TokenClient:
        """The mount's Skyflow client (one connection pool), created on first use."""
        if self._client is None or self._client.closed:
            self._client = TokenClient(
                self.policy,
                transport=self.settings.transport,
                verify=shared_tls_context(),
                on_attempt=self.telemetry.on_attempt,
            )
        return self._client

    async def mint(self, account: ServiceAccount, role_ids: list[str], ctx: object) -> IssuedToken:
        """Exchange an assertion for a token, within the policy's deadline."""
        deadline = time.monotonic() + self.policy.deadline
        with self.telemetry.upstream_exchange():
            return await self.client().exchange(account, role_ids, ctx, deadline=deadline)

    # -- lifecycle -------------------------------------------------------------------------

    async def invalidate(self, key: str) -> None:
        """A key changed elsewhere (another node): forget what derives from it."""
        if key == store.CONFIG_KEY:
            self._config = UNLOADED
            self._account = None
            self.generations.config += 1
            self.cache.clear()
        elif key.startswith(store.ROLE_PREFIX):
            name = key[len(store.ROLE_PREFIX) :]
            self._roles.pop(name, None)
            self.generations.bump_role(name)
            self.cache.drop_role(name)

    async def cleanup(self) -> None:
        """The mount is going away: stop minting, close the connection pool."""
        await self.cache.aclose()
        self.cache.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.telemetry.flush()


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """One client TLS context for every mount of the process: each context holds its own
    copy of the trust store (``SSL_CERT_FILE`` or the system's), about a megabyte."""
    return ssl.create_default_context()


def _account_source(config: ConfigEntry | None) -> object:
    if config is None:
        return None
    if config.credentials_type == "file_path":
        return (config.credentials_file_path, None, None)
    return ("json", config.version)


def make_factory(settings: EngineSettings | None = None) -> BackendFactory:
    """A backend factory; ``settings`` default to the environment's."""

    async def build(config: BackendConfig) -> Backend:
        return build_backend(SkyflowBackend(config, settings), config)

    return build


async def factory(config: BackendConfig) -> Backend:
    """Build the engine for one mount (called by the plugin server on Setup)."""
    return build_backend(SkyflowBackend(config), config)


def build_backend(engine: SkyflowBackend, config: BackendConfig) -> Backend:
    """The SDK backend serving ``engine``'s paths."""
    from .path_config import config_paths
    from .path_creds import creds_paths
    from .path_health import health_paths
    from .path_roles import role_paths

    return Backend(
        help=BACKEND_HELP,
        storage=config.storage,
        special_paths=SpecialPaths(seal_wrap_storage=(store.CONFIG_KEY, store.ROLE_PREFIX)),
        paths=[
            *config_paths(engine),
            *role_paths(engine),
            *creds_paths(engine),
            *health_paths(engine),
        ],
        invalidate=engine.invalidate,
        cleanup=engine.cleanup,
        logger=config.logger,
    )
