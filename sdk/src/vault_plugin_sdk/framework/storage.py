"""The storage a backend sees: a flat key/value view scoped to its mount."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._records import dataclass_methods, set_field


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class StorageEntry:
    """One stored value. ``seal_wrap`` marks it for the host's seal wrapping, which only
    Vault Enterprise performs; OpenBao and Vault CE encrypt it with the barrier like every
    entry. The value is left out of ``repr``: it may hold a secret, and reprs reach logs
    and tracebacks."""

    key: str
    value: bytes = field(repr=False)
    seal_wrap: bool = False

    def __init__(self, key: str, value: bytes, seal_wrap: bool = False) -> None:
        # Written out rather than generated: see _records.
        set_field(self, "key", key)
        set_field(self, "value", value)
        set_field(self, "seal_wrap", seal_wrap)

    def __repr__(self) -> str:
        return (
            f"StorageEntry(key={self.key!r}, value=<{len(self.value)} bytes>, "
            f"seal_wrap={self.seal_wrap!r})"
        )

    @classmethod
    def from_json(cls, key: str, obj: Any, *, seal_wrap: bool = False) -> StorageEntry:
        """An entry whose value is ``obj`` encoded as compact JSON."""
        return cls(key, json.dumps(obj, separators=(",", ":")).encode(), seal_wrap)

    def json(self) -> Any:
        """The value decoded from JSON."""
        return json.loads(self.value)


class Storage(Protocol):
    """Mount-scoped storage. Keys are relative to the mount; ``list`` returns one level,
    with sub-prefixes ending in ``/``. Failures raise
    :class:`~vault_plugin_sdk.framework.errors.StorageError`."""

    async def get(self, key: str) -> StorageEntry | None:
        """The entry at ``key``, or ``None``."""
        ...

    async def put(self, entry: StorageEntry) -> None:
        """Create or replace an entry."""
        ...

    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys directly under ``prefix``, sorted."""
        ...
