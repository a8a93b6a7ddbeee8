"""Clients for the services the host serves back to the plugin: Storage and SystemView."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpclib.exceptions import GRPCError

from ..framework.errors import ReadOnlyStorageError, StorageError
from ..framework.storage import StorageEntry
from ..framework.system_view import Alias, Entity, Group
from .pb import backend_pb2 as pb

if TYPE_CHECKING:
    from .broker_channel import BrokerChannel

# The host services' methods (backend.proto).
_STORAGE_GET = "/pb.Storage/Get"
_STORAGE_PUT = "/pb.Storage/Put"
_STORAGE_DELETE = "/pb.Storage/Delete"
_STORAGE_LIST = "/pb.Storage/List"
_DEFAULT_LEASE_TTL = "/pb.SystemView/DefaultLeaseTTL"
_MAX_LEASE_TTL = "/pb.SystemView/MaxLeaseTTL"
_ENTITY_INFO = "/pb.SystemView/EntityInfo"
_GROUPS_FOR_ENTITY = "/pb.SystemView/GroupsForEntity"
_PLUGIN_ENV = "/pb.SystemView/PluginEnv"

_NANOSECONDS = 1_000_000_000
_READONLY_MARKERS = ("readonly", "read-only", "read only")


def _storage_failure(message: str) -> StorageError:
    lowered = message.lower()
    if any(marker in lowered for marker in _READONLY_MARKERS):
        return ReadOnlyStorageError(message)
    return StorageError(message)


class GrpcStorage:
    """The mount's storage, reached through the broker channel."""

    def __init__(self, channel: BrokerChannel) -> None:
        self._channel = channel

    async def get(self, key: str) -> StorageEntry | None:
        try:
            reply = await self._channel.unary(
                _STORAGE_GET, pb.StorageGetArgs(key=key), pb.StorageGetReply
            )
        except (GRPCError, OSError) as exc:
            raise _storage_failure(f"storage get failed: {exc}") from exc
        if reply.err:
            raise _storage_failure(reply.err)
        if not reply.HasField("entry"):
            return None
        return StorageEntry(reply.entry.key, reply.entry.value, reply.entry.seal_wrap)

    async def put(self, entry: StorageEntry) -> None:
        message = pb.StoragePutArgs(
            entry=pb.StorageEntry(key=entry.key, value=entry.value, seal_wrap=entry.seal_wrap)
        )
        try:
            reply = await self._channel.unary(_STORAGE_PUT, message, pb.StoragePutReply)
        except (GRPCError, OSError) as exc:
            raise _storage_failure(f"storage put failed: {exc}") from exc
        if reply.err:
            raise _storage_failure(reply.err)

    async def delete(self, key: str) -> None:
        try:
            reply = await self._channel.unary(
                _STORAGE_DELETE, pb.StorageDeleteArgs(key=key), pb.StorageDeleteReply
            )
        except (GRPCError, OSError) as exc:
            raise _storage_failure(f"storage delete failed: {exc}") from exc
        if reply.err:
            raise _storage_failure(reply.err)

    async def list(self, prefix: str) -> list[str]:
        try:
            reply = await self._channel.unary(
                _STORAGE_LIST, pb.StorageListArgs(prefix=prefix), pb.StorageListReply
            )
        except (GRPCError, OSError) as exc:
            raise _storage_failure(f"storage list failed: {exc}") from exc
        if reply.err:
            raise _storage_failure(reply.err)
        return sorted(reply.keys)


class GrpcSystemView:
    """The host's system view, reached through the broker channel."""

    def __init__(self, channel: BrokerChannel) -> None:
        self._channel = channel

    async def default_lease_ttl(self) -> int:
        reply = await self._channel.unary(_DEFAULT_LEASE_TTL, pb.Empty(), pb.TTLReply)
        return reply.TTL // _NANOSECONDS

    async def max_lease_ttl(self) -> int:
        reply = await self._channel.unary(_MAX_LEASE_TTL, pb.Empty(), pb.TTLReply)
        return reply.TTL // _NANOSECONDS

    async def entity_info(self, entity_id: str) -> Entity | None:
        reply = await self._channel.unary(
            _ENTITY_INFO, pb.EntityInfoArgs(entity_id=entity_id), pb.EntityInfoReply
        )
        if reply.err:
            raise StorageError(f"entity lookup failed: {reply.err}")
        if not reply.HasField("entity") or not reply.entity.ID:
            return None
        entity = reply.entity
        aliases = tuple(
            Alias(
                mount_accessor=a.mount_accessor,
                mount_type=a.mount_type,
                name=a.name,
                metadata=dict(a.metadata),
            )
            for a in entity.aliases
        )
        return Entity(
            id=entity.ID,
            name=entity.name,
            metadata=dict(entity.metadata),
            aliases=aliases,
            disabled=entity.disabled,
        )

    async def groups_for_entity(self, entity_id: str) -> list[Group]:
        reply = await self._channel.unary(
            _GROUPS_FOR_ENTITY, pb.EntityInfoArgs(entity_id=entity_id), pb.GroupsForEntityReply
        )
        if reply.err:
            raise StorageError(f"group lookup failed: {reply.err}")
        return [Group(id=g.ID, name=g.name, metadata=dict(g.metadata)) for g in reply.groups]

    async def host_version(self) -> str:
        reply = await self._channel.unary(_PLUGIN_ENV, pb.Empty(), pb.PluginEnvReply)
        return reply.plugin_environment.vault_version
