"""Paths: a regex pattern with named parts, its fields, its operations and their help."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ._records import FACTORY, dataclass_methods, set_field
from .fields import NAME_PATTERN, Field
from .request import FieldData, Operation, Request
from .response import Response

OperationCallback = Callable[[Request, FieldData], Awaitable[Response | None]]
ExistenceCheck = Callable[[Request, FieldData], Awaitable[bool]]


def name_part(name: str) -> str:
    """A named pattern part matching a Vault-style name (Vault's ``GenericNameRegex``)."""
    return f"(?P<{name}>{NAME_PATTERN})"


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class OperationHandler:
    """One operation on a path: the coroutine that serves it and its one-line summary."""

    callback: OperationCallback
    summary: str
    description: str = ""

    def __init__(self, callback: OperationCallback, summary: str, description: str = "") -> None:
        # Written out rather than generated: see _records.
        set_field(self, "callback", callback)
        set_field(self, "summary", summary)
        set_field(self, "description", description)


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class Path:
    """A set of endpoints sharing one pattern.

    ``pattern`` is a regular expression matched against the whole mount-relative path;
    named groups become fields. ``existence_check`` decides whether a write is a ``create``
    (the object does not exist) or an ``update``; without one every write is an
    ``update``. ``reject_unknown_fields`` answers 400 naming any field the path does not
    declare, instead of Vault's default of ignoring it with a warning.
    """

    pattern: str
    operations: Mapping[Operation, OperationHandler]
    fields: Mapping[str, Field] = field(default_factory=dict)
    existence_check: ExistenceCheck | None = None
    help_synopsis: str = ""
    help_description: str = ""
    reject_unknown_fields: bool = False

    def __init__(
        self,
        pattern: str,
        operations: Mapping[Operation, OperationHandler],
        fields: Mapping[str, Field] = FACTORY,
        existence_check: ExistenceCheck | None = None,
        help_synopsis: str = "",
        help_description: str = "",
        reject_unknown_fields: bool = False,
    ) -> None:
        # Written out rather than generated: see _records.
        set_field(self, "pattern", pattern)
        set_field(self, "operations", operations)
        set_field(self, "fields", {} if fields is FACTORY else fields)
        set_field(self, "existence_check", existence_check)
        set_field(self, "help_synopsis", help_synopsis)
        set_field(self, "help_description", help_description)
        set_field(self, "reject_unknown_fields", reject_unknown_fields)
        self.__post_init__()

    def __post_init__(self) -> None:
        compiled = re.compile(f"^{self.pattern}$")
        for group in compiled.groupindex:
            if group not in self.fields:
                raise ValueError(f"pattern group '{group}' of {self.pattern!r} has no field")
        object.__setattr__(self, "_regex", compiled)

    @property
    def regex(self) -> re.Pattern[str]:
        """The compiled, anchored pattern."""
        compiled: re.Pattern[str] = self.__dict__["_regex"]
        return compiled
