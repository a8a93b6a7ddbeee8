"""What the engine stores: the mount's config and its roles, each with a schema version.

Entries are JSON. ``schema_version`` lets a later release migrate entries it reads; an
entry from a newer release than this one is refused rather than misread.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from vault_plugin_sdk.framework import Storage, StorageEntry, StorageError

CONFIG_KEY = "config"
ROLE_PREFIX = "roles/"
WRITE_PROBE_KEY = "write-probe"
"""Never holds an entry: deleting it tells an active node (a no-op) from a standby."""
SCHEMA_VERSION = 1


def utc_now() -> str:
    """The current time in RFC 3339 with a ``Z`` suffix, to the second."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Entry:
    """What the config and role entries share: how a stored JSON entry becomes one."""

    _KIND: ClassVar[str]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        """The entry stored as ``raw``: keys this release does not know are dropped, and an
        entry of a newer schema than this release's is refused."""
        version = raw.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StorageError(
                f"stored {cls._KIND} has schema version {version!r}, newer than this plugin "
                f"supports ({SCHEMA_VERSION}); upgrade the plugin"
            )
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class ConfigEntry(_Entry):
    """The mount's Skyflow service account and its metadata.

    With ``credentials_type == "json"`` the whole credentials JSON is stored (encrypted by
    the host's barrier; marked for seal wrapping, which only Vault Enterprise does); with
    ``"file_path"`` only the path is, and the file is read when used.
    ``client_id``, ``key_id`` and ``token_uri`` are copied from the credentials so that a
    read can show them without touching the key.
    """

    _KIND = "config"

    credentials_type: str
    # Holds the private key: never in repr (reprs reach logs and tracebacks).
    credentials_json: str | None = field(default=None, repr=False)
    credentials_file_path: str | None = None
    client_id: str = ""
    client_name: str | None = None
    key_id: str = ""
    token_uri: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    version: int = 0
    last_updated: str = ""
    schema_version: int = SCHEMA_VERSION


@dataclass
class RoleEntry(_Entry):
    """A named set of Skyflow role IDs and how tokens for it are minted and reused."""

    _KIND = "role"

    name: str
    role_ids: list[str]
    description: str = ""
    tags: list[str] = field(default_factory=list)
    min_remaining_ttl: int = 600
    cache_tokens: bool = True
    ctx_mode: str = "free"
    allowed_ctx_keys: list[str] = field(default_factory=list)
    required_ctx_keys: list[str] = field(default_factory=list)
    ctx_template: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""
    schema_version: int = SCHEMA_VERSION


async def load_config(storage: Storage) -> ConfigEntry | None:
    """The stored config, or ``None``."""
    entry = await storage.get(CONFIG_KEY)
    return ConfigEntry.from_json(entry.json()) if entry else None


async def save_config(storage: Storage, config: ConfigEntry) -> None:
    """Store the config, marked for seal wrapping (Vault Enterprise only)."""
    await storage.put(StorageEntry.from_json(CONFIG_KEY, asdict(config), seal_wrap=True))


async def load_role(storage: Storage, name: str) -> RoleEntry | None:
    """The stored role, or ``None``."""
    entry = await storage.get(ROLE_PREFIX + name)
    return RoleEntry.from_json(entry.json()) if entry else None


async def save_role(storage: Storage, role: RoleEntry) -> None:
    """Store a role, marked for seal wrapping (Vault Enterprise only)."""
    await storage.put(StorageEntry.from_json(ROLE_PREFIX + role.name, asdict(role), seal_wrap=True))


async def probe_writable(storage: Storage) -> None:
    """Raise :class:`~vault_plugin_sdk.framework.ReadOnlyStorageError` on a standby
    (or a performance standby), whose storage refuses every write, before any costly work.

    Deleting a key that never exists changes nothing on an active node. The error is the
    host's read-only sentinel, which makes the host forward the request to the active node.
    """
    await storage.delete(WRITE_PROBE_KEY)
