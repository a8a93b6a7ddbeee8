"""The storage a backend sees: a flat key/value view scoped to its mount."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StorageEntry:
    """One stored value. ``seal_wrap`` asks the host to seal-wrap it (with a capable seal)."""

    key: str
    value: bytes
    seal_wrap: bool = False

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
