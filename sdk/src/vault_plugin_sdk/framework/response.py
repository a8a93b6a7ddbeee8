"""What a handler returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._records import FACTORY, dataclass_methods


@dataclass_methods
@dataclass(init=False, repr=False, eq=False)
class Response:
    """Response data and warnings.

    Return ``None`` from a read handler for "not found" (HTTP 404), and from a write or
    delete handler for "no content" (HTTP 204). ``status`` set to anything but ``None``
    sends ``data`` as the raw JSON body with that HTTP status, which lets a handler answer
    e.g. 503 together with a structured body (Vault's ``RespondWithStatusCode``).
    ``errors`` (only with ``status``) goes into that body next to ``data``: Vault's API
    client, and so the CLI, shows nothing but a body's ``errors`` for a non-2xx status.
    """

    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    status: int | None = None
    errors: list[str] = field(default_factory=list)

    def __init__(
        self,
        data: dict[str, Any] = FACTORY,
        warnings: list[str] = FACTORY,
        status: int | None = None,
        errors: list[str] = FACTORY,
    ) -> None:
        # Written out rather than generated: see _records.
        self.data = {} if data is FACTORY else data
        self.warnings = [] if warnings is FACTORY else warnings
        self.status = status
        self.errors = [] if errors is FACTORY else errors

    @classmethod
    def error(cls, message: str, data: dict[str, Any] | None = None) -> Response:
        """An error response the caller can fix: HTTP 400 with ``message``.

        The host treats a response as an error only when its data holds ``error`` alone or
        ``error`` and ``data`` (Vault's ``logical.ErrorResponse``); any other key would turn
        it into a 200. So details go under ``data``.
        """
        if data is None:
            return cls(data={"error": message})
        return cls(data={"error": message, "data": data})

    @classmethod
    def list(cls, keys: list[str], **data: Any) -> Response:
        """A list response (``keys``); an empty list reads as 404, as in Vault."""
        return cls(data={"keys": list(keys), **data})

    @property
    def is_error(self) -> bool:
        """Whether this is an error response."""
        return self.status is None and set(self.data) in ({"error"}, {"error", "data"})

    def add_warning(self, warning: str) -> None:
        """Attach a warning, shown to the caller under ``warnings``."""
        self.warnings.append(warning)

    def wire_data(self) -> dict[str, Any]:
        """The data as the host expects it, with a raw body for an explicit status."""
        if self.status is None:
            return self.data
        body: dict[str, Any] = {"data": self.data, "warnings": self.warnings or None}
        if self.errors:
            body["errors"] = self.errors
        return {
            "http_status_code": self.status,
            "http_content_type": "application/json",
            "http_raw_body": json.dumps(body),
        }
