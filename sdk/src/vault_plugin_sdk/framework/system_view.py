"""What a backend may ask the host about itself and about callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ._records import FACTORY, dataclass_methods, set_field


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class Alias:
    """An identity alias: the name an entity has on one auth mount."""

    mount_accessor: str
    mount_type: str
    name: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __init__(
        self, mount_accessor: str, mount_type: str, name: str, metadata: Mapping[str, str] = FACTORY
    ) -> None:
        # Written out rather than generated: see _records.
        set_field(self, "mount_accessor", mount_accessor)
        set_field(self, "mount_type", mount_type)
        set_field(self, "name", name)
        set_field(self, "metadata", {} if metadata is FACTORY else metadata)


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class Entity:
    """A caller's identity entity, as the host's identity store holds it."""

    id: str
    name: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[Alias, ...] = ()
    disabled: bool = False

    def __init__(
        self,
        id: str,
        name: str,
        metadata: Mapping[str, str] = FACTORY,
        aliases: tuple[Alias, ...] = (),
        disabled: bool = False,
    ) -> None:
        # Written out rather than generated: see _records.
        set_field(self, "id", id)
        set_field(self, "name", name)
        set_field(self, "metadata", {} if metadata is FACTORY else metadata)
        set_field(self, "aliases", aliases)
        set_field(self, "disabled", disabled)


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class Group:
    """An identity group an entity belongs to."""

    id: str
    name: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __init__(self, id: str, name: str, metadata: Mapping[str, str] = FACTORY) -> None:
        # Written out rather than generated: see _records.
        set_field(self, "id", id)
        set_field(self, "name", name)
        set_field(self, "metadata", {} if metadata is FACTORY else metadata)


class SystemView(Protocol):
    """Host facts available to a backend (Vault's ``logical.SystemView``)."""

    async def default_lease_ttl(self) -> int:
        """The mount's default lease TTL, in seconds."""
        ...

    async def max_lease_ttl(self) -> int:
        """The mount's maximum lease TTL, in seconds."""
        ...

    async def entity_info(self, entity_id: str) -> Entity | None:
        """The entity with this ID, or ``None`` when there is none."""
        ...

    async def groups_for_entity(self, entity_id: str) -> list[Group]:
        """The groups (direct and inherited) the entity belongs to."""
        ...

    async def host_version(self) -> str:
        """The host's version string, e.g. ``2.7.2``."""
        ...


@dataclass_methods
@dataclass(init=False, repr=False, eq=False)
class StaticSystemView:
    """A :class:`SystemView` with fixed answers, for tests and for hosts that give none."""

    default_ttl: int = 32 * 86400
    max_ttl: int = 32 * 86400
    entities: dict[str, Entity] = field(default_factory=dict)
    groups: dict[str, list[Group]] = field(default_factory=dict)
    version: str = ""

    def __init__(
        self,
        default_ttl: int = 32 * 86400,
        max_ttl: int = 32 * 86400,
        entities: dict[str, Entity] = FACTORY,
        groups: dict[str, list[Group]] = FACTORY,
        version: str = "",
    ) -> None:
        # Written out rather than generated: see _records.
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.entities = {} if entities is FACTORY else entities
        self.groups = {} if groups is FACTORY else groups
        self.version = version

    async def default_lease_ttl(self) -> int:
        return self.default_ttl

    async def max_lease_ttl(self) -> int:
        return self.max_ttl

    async def entity_info(self, entity_id: str) -> Entity | None:
        return self.entities.get(entity_id)

    async def groups_for_entity(self, entity_id: str) -> list[Group]:
        return list(self.groups.get(entity_id, []))

    async def host_version(self) -> str:
        return self.version
