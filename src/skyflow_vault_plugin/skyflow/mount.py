"""One mount's state: the Skyflow engine's per-mount instance, shared by its paths.

State kept in memory, so that a warm ``creds`` read makes no storage or Skyflow call:
the config and its parsed key, the roles, the token cache and the Skyflow client. Every
local write updates it; the host's ``InvalidateKey`` (a write made elsewhere) drops it.

A write takes effect when it returns:

* every write and every ``InvalidateKey`` bumps a *generation* (config, or one role); a
  storage read stores what it loaded only if the generation it took before the read is
  still current, so a read in flight across a write or a delete cannot bring the old entry
  back (the active node never gets ``InvalidateKey`` for its own writes);
* read-modify-writes of one key run under that key's lock (:class:`KeyedLocks`);
* the parsed service account is cached under a fingerprint of the credential material,
  never under the config's version (which restarts at 1 after a delete).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vault_plugin_sdk.framework import (
    BackendConfig,
    Storage,
    SystemView,
)

from .. import __version__
from . import storage as store
from .cache import ByteBudget, TokenCache, process_budget
from .client import ExchangePolicy, TokenClient
from .credentials import (
    CREDENTIALS_DIR_ENV,
    ServiceAccount,
    TokenHosts,
    credentials_dir_for,
    load_credentials_file,
    parse_credentials,
)
from .engine_env import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, read_engine_env
from .keyed_locks import KeyedLocks
from .responses import IssuedToken
from .storage import ConfigEntry, RoleEntry
from .telemetry import Telemetry, process_telemetry
from .trust import shared_tls_context

if TYPE_CHECKING:
    import httpx

PLUGIN_VERSION = f"v{__version__}"

HEALTH_CACHE_KEY = ("", "")  # the unscoped token health checks reuse; no role has this name


MAX_ABSENT_ROLES = 1024
"""Names remembered as "no such role" (any caller can ask for any name: bounded, LRU)."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """Process-wide settings, read once from the environment given at registration.

    ``SKYFLOW_TOKEN_CACHE_MAX_ENTRIES`` caps each mount's token cache (default 10000);
    ``SKYFLOW_TOKEN_CACHE_MAX_BYTES`` caps the bytes of every mount's tokens together
    (default 64 MiB); ``SKYFLOW_REQUEST_DEADLINE`` bounds one token exchange, retries
    included (seconds, default 30, below Vault's 90 s request limit). The plugin checks them
    at start (see engine_env.py). ``SKYFLOW_ALLOWED_TOKEN_HOSTS`` lists the hosts a
    ``tokenURI`` may name (default: Skyflow's); ``SKYFLOW_CREDENTIALS_DIR`` enables
    ``credentials_file_path`` under ``<dir>/<mount path>/`` (unset: file mode is refused).
    ``transport`` lets tests put Skyflow in-process; ``telemetry`` replaces the process-wide
    telemetry (see telemetry/); ``budget`` replaces the process-wide byte budget.
    """

    cache_max_entries: int = DEFAULT_MAX_ENTRIES
    cache_max_bytes: int = DEFAULT_MAX_BYTES
    policy: ExchangePolicy = field(default_factory=ExchangePolicy)
    transport: httpx.AsyncBaseTransport | None = None
    telemetry: Telemetry | None = None
    budget: ByteBudget | None = None
    allowed_token_hosts: TokenHosts = field(default_factory=TokenHosts.default)
    credentials_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineSettings:
        """Settings from environment variables, falling back to defaults."""
        values = read_engine_env(env)
        return cls(
            cache_max_entries=values.cache_max_entries,
            cache_max_bytes=values.cache_max_bytes,
            policy=ExchangePolicy(deadline=values.deadline),
            allowed_token_hosts=TokenHosts.from_env(env),
            credentials_dir=env.get(CREDENTIALS_DIR_ENV) or None,
        )


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


class MountState:
    """One mount of the engine."""

    def __init__(self, config: BackendConfig, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings.from_env(os.environ)
        self.storage: Storage = config.storage
        self.system_view: SystemView = config.system_view
        self.logger = config.logger
        budget = self.settings.budget or process_budget(self.settings.cache_max_bytes)
        self.cache = TokenCache(self.settings.cache_max_entries, budget)
        self.policy = self.settings.policy
        self.generations = _Generations()
        self.locks = KeyedLocks()
        self.telemetry = self.settings.telemetry or process_telemetry()
        self._config: ConfigEntry | _Unloaded | None = UNLOADED
        self._account: ServiceAccount | None = None
        self._account_key: object = None
        self._roles: dict[str, RoleEntry] = {}
        self._absent_roles: OrderedDict[str, None] = OrderedDict()
        self._client: TokenClient | None = None
        self._client_trust: object = None
        self._retired: dict[asyncio.Task[None], TokenClient] = {}

    # -- config ----------------------------------------------------------------------------

    async def get_config(self) -> ConfigEntry | None:
        """The mount's config, from memory or storage.

        What storage returned is kept only if no write or invalidation landed meanwhile;
        the caller gets it either way (its read overlapped the write).
        """
        if not isinstance(self._config, _Unloaded):
            return self._config
        generation = self.generations.config
        loaded = await store.load_config(self.storage)
        if generation == self.generations.config:
            self._config = loaded
        return loaded

    def set_config(self, config: ConfigEntry | None, account: ServiceAccount | None) -> None:
        """Record a config just written (or deleted) and drop every token of the mount."""
        self._config = config
        self._account = account
        self._account_key = _account_key(config) if account and config else None
        self.generations.config += 1
        self.cache.clear()

    async def account(self, config: ConfigEntry, mount_point: str) -> ServiceAccount:
        """The parsed service account, cached under a fingerprint of its source.

        A ``credentials_json`` account is keyed by the SHA-256 of the stored JSON; a file by
        its path, size and modification time, and re-read when it changed on disk
        (``mount_point``, the request's, selects the directory a file must lie in). When a
        file's content now holds another account (client, key or token URI), that is a new
        account: the mount's tokens are dropped and the change is logged, as a config write
        would.
        """
        key = _account_key(config)
        if config.credentials_type == "file_path":
            path = config.credentials_file_path or ""
            try:
                stat = await asyncio.to_thread(os.stat, path)
                key = ("file", path, stat.st_mtime_ns, stat.st_size, stat.st_ino)
            except OSError:
                key = ("file", path, None)  # load_credentials_file reports the problem
        if self._account is not None and self._account_key == key:
            return self._account
        previous, previous_key = self._account, self._account_key
        if config.credentials_type == "file_path":
            path = config.credentials_file_path or ""
            account = await self.load_file(path, mount_point)
            same_file = isinstance(previous_key, tuple) and previous_key[:2] == ("file", path)
            if previous is not None and same_file and _identity(previous) != _identity(account):
                _log.warning(
                    "the credentials file now holds another service account; dropping every "
                    "token of the mount",
                    extra={"client_id": account.client_id, "key_id": account.key_id},
                )
                self.generations.config += 1
                self.cache.clear()
        else:
            account = self.parse_json(config.credentials_json or "")
        self._account, self._account_key = account, key
        return account

    def parse_json(self, text: str) -> ServiceAccount:
        """Parse credentials JSON under this process's token-host allow-list."""
        return parse_credentials(text, allowed_hosts=self.settings.allowed_token_hosts)

    async def load_file(self, path: str, mount_point: str) -> ServiceAccount:
        """Read a credentials file confined to this mount's directory (see credentials.py)."""
        field = "credentials_file_path"
        root = credentials_dir_for(self.settings.credentials_dir, mount_point, field)
        return await asyncio.to_thread(
            functools.partial(
                load_credentials_file,
                path,
                root=root,
                allowed_hosts=self.settings.allowed_token_hosts,
            )
        )

    # -- roles -----------------------------------------------------------------------------

    async def get_role(self, name: str) -> RoleEntry | None:
        """A role, from memory or storage. Absence is remembered too, for a bounded number
        of names; a load overlapping a write of the role is returned but not kept."""
        role = self._roles.get(name)
        if role is not None:
            return role
        if name in self._absent_roles:
            self._absent_roles.move_to_end(name)
            return None
        generation = self.generations.role(name)
        loaded = await store.load_role(self.storage, name)
        if generation == self.generations.role(name):
            self._remember_role(name, loaded)
        return loaded

    def set_role(self, name: str, role: RoleEntry | None) -> None:
        """Record a role just written (or deleted) and drop its tokens."""
        self._remember_role(name, role)
        self.generations.bump_role(name)
        self.cache.drop_role(name)

    def _remember_role(self, name: str, role: RoleEntry | None) -> None:
        if role is not None:
            self._absent_roles.pop(name, None)
            self._roles[name] = role
            return
        self._roles.pop(name, None)
        self._absent_roles[name] = None
        self._absent_roles.move_to_end(name)
        while len(self._absent_roles) > MAX_ABSENT_ROLES:
            self._absent_roles.popitem(last=False)

    # -- Skyflow ---------------------------------------------------------------------------

    def client(self) -> TokenClient:
        """The mount's Skyflow client (one connection pool), created on first use, and again
        when the trust store changed (``SKYFLOW_CA_FILE`` edited: see trust.py)."""
        trust = shared_tls_context()
        if self._client is None or self._client.closed or self._client_trust is not trust:
            if self._client is not None and not self._client.closed:
                self._retire(self._client)
            self._client = TokenClient(
                self.policy,
                transport=self.settings.transport,
                verify=trust,
                on_attempt=self.telemetry.on_attempt,
            )
            self._client_trust = trust
        return self._client

    def _retire(self, client: TokenClient) -> None:
        """Close a replaced client once exchanges still using it are past their deadline."""

        async def close_later() -> None:
            await asyncio.sleep(self.policy.deadline)
            await client.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retired[task] = client
        task.add_done_callback(lambda done: self._retired.pop(done, None))

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
            self._account_key = None
            self.generations.config += 1
            self.cache.clear()
        elif key.startswith(store.ROLE_PREFIX):
            name = key[len(store.ROLE_PREFIX) :]
            self._roles.pop(name, None)
            self._absent_roles.pop(name, None)
            self.generations.bump_role(name)
            self.cache.drop_role(name)

    async def cleanup(self) -> None:
        """The mount is going away: stop minting, close the connection pool."""
        await self.cache.aclose()
        self.cache.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        retired = dict(self._retired)
        for task in retired:
            task.cancel()
        await asyncio.gather(*retired, return_exceptions=True)
        for client in retired.values():
            await client.aclose()
        await self.telemetry.flush()


def _account_key(config: ConfigEntry | None) -> object:
    """What a cached account is looked up by: a fingerprint of the credential material
    (never the config's version, which restarts at 1 after a delete)."""
    if config is None:
        return None
    if config.credentials_type == "file_path":
        # No size or mtime yet: the first use stats the file and compares the account.
        return ("file", config.credentials_file_path, "written")
    digest = hashlib.sha256((config.credentials_json or "").encode()).hexdigest()
    return ("json", digest)


def _identity(account: ServiceAccount) -> tuple[str, str, str, str]:
    return (account.client_id, account.key_id, account.token_uri, account.key_fingerprint)
