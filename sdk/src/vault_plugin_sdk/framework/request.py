"""A request as a backend's handlers see it, and its typed field data."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._records import FACTORY, dataclass_methods
from .errors import FieldError
from .fields import Field
from .storage import Storage


class Operation(enum.StrEnum):
    """The logical operations a request may carry (Vault's ``logical.Operation``)."""

    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    LIST = "list"
    HELP = "help"
    ROLLBACK = "rollback"
    RENEW = "renew"
    REVOKE = "revoke"
    RESOLVE_PATH = "resolve-path"


@dataclass_methods
@dataclass(init=False, repr=False, eq=False)
class Request:
    """One request routed to a backend.

    ``path`` is relative to the mount. ``data`` holds the raw request data: the JSON body of
    a write, or the query parameters of a read or list. ``headers`` is empty unless the
    mount passes headers through (``passthrough_request_headers``); header names are
    lower-cased. The caller's token itself is never exposed here.
    """

    operation: str
    path: str
    storage: Storage
    data: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    mount_point: str = ""
    mount_type: str = ""
    mount_accessor: str = ""
    display_name: str = ""
    entity_id: str = ""
    client_token_accessor: str = ""
    remote_addr: str = ""
    remote_port: int = 0
    headers: dict[str, list[str]] = field(default_factory=dict)
    match: dict[str, str] = field(default_factory=dict)

    def __init__(
        self,
        operation: str,
        path: str,
        storage: Storage,
        data: dict[str, Any] = FACTORY,
        id: str = "",
        mount_point: str = "",
        mount_type: str = "",
        mount_accessor: str = "",
        display_name: str = "",
        entity_id: str = "",
        client_token_accessor: str = "",
        remote_addr: str = "",
        remote_port: int = 0,
        headers: dict[str, list[str]] = FACTORY,
        match: dict[str, str] = FACTORY,
    ) -> None:
        # Written out rather than generated: see _records.
        self.operation = operation
        self.path = path
        self.storage = storage
        self.data = {} if data is FACTORY else data
        self.id = id
        self.mount_point = mount_point
        self.mount_type = mount_type
        self.mount_accessor = mount_accessor
        self.display_name = display_name
        self.entity_id = entity_id
        self.client_token_accessor = client_token_accessor
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.headers = {} if headers is FACTORY else headers
        self.match = {} if match is FACTORY else match

    def header(self, name: str) -> str | None:
        """The first value of a passed-through header, case-insensitively, or ``None``."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


class FieldData:
    """The fields of one request, parsed against a path's field schema.

    Values from the path pattern's named groups take precedence over request data.
    Parsing happens once, on construction, so that a bad value is reported before any
    handler runs.
    """

    def __init__(
        self,
        schema: Mapping[str, Field],
        raw: Mapping[str, Any],
        match: Mapping[str, str] | None = None,
    ) -> None:
        self.schema = schema
        merged = dict(raw)
        merged.update(match or {})
        self.raw = merged
        self._values: dict[str, Any] = {}
        self.unknown = sorted(k for k in merged if k not in schema)
        for name, value in merged.items():
            spec = schema.get(name)
            if spec is not None:
                self._values[name] = spec.parse(name, value)

    def get(self, name: str) -> Any:
        """The field's value, or its default when the request did not give it."""
        if name in self._values:
            return self._values[name]
        spec = self.schema.get(name)
        if spec is None:
            raise KeyError(f"field '{name}' is not in the path's schema")
        return spec.default_value()

    def get_ok(self, name: str) -> tuple[Any, bool]:
        """``(value, True)`` when the request gave the field, else ``(default, False)``."""
        if name in self._values:
            return self._values[name], True
        return self.get(name), False

    def has(self, name: str) -> bool:
        """Whether the request gave the field."""
        return name in self._values

    def require(self, *names: str) -> None:
        """Raise :class:`FieldError` for the first of ``names`` the request did not give."""
        for name in names:
            if name not in self._values:
                raise FieldError(name, "is required")
