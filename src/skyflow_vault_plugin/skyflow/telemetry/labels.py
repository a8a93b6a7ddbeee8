"""Bounded label values: every label a request can set is cut to a known size and count, so a
caller cannot make the metrics' cardinality (or the memory behind them) grow without bound.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

from vault_plugin_sdk.framework import Request

from .settings import APPLICATION_LABEL

__all__ = [
    "MAX_LABEL_MEMO",
    "MEMO_BUDGET",
    "MEMO_MAX_BYTES",
    "ApplicationLabels",
    "Memo",
    "ctx_shape",
    "mount_name",
    "request_id_label",
    "trace_id_from_traceparent",
]

MAX_LABEL_MEMO = 4096
"""The most raw values (header values, mount paths) remembered with their label."""
MEMO_MAX_BYTES = 4096
"""The longest encoding a memo keeps: a caller can put a value of its own in an attribute or
a log field (a role name in the path, up to the host's request limit), and a thousand of
those must not stay in memory."""
MEMO_BUDGET = 256 * 1024
"""The most characters (or bytes) of encodings one :class:`Memo` keeps: a thousand entries
of the usual few hundred, or some sixty of the longest a caller can make them remembered."""
_MAX_CTX_KEYS = 64
_MAX_REQUEST_ID = 128
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_PRINTABLE = re.compile(r"[^\x21-\x7e]")


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """Encodings remembered by key, bounded in count and in size: when one more would pass
    ``max_entries`` or ``budget`` (characters or bytes of the encodings; their keys hold
    about as much again), the memo starts over. Nothing longer than
    :data:`MEMO_MAX_BYTES` is kept. Look up in ``entries``, a plain dictionary, so that a
    hit costs no call of ours."""

    __slots__ = ("_budget", "_max_entries", "entries", "size")

    def __init__(self, max_entries: int, budget: int = MEMO_BUDGET) -> None:
        self.entries: dict[K, V] = {}
        self.size = 0
        """Characters (or bytes) of the encodings kept."""
        self._max_entries = max_entries
        self._budget = budget

    def keep(self, key: K, value: V, size: int) -> None:
        """Remember ``value``, ``size`` characters or bytes long, under ``key``."""
        if size > MEMO_MAX_BYTES or key in self.entries:
            return
        if len(self.entries) >= self._max_entries or self.size + size > self._budget:
            self.entries.clear()
            self.size = 0
        self.entries[key] = value
        self.size += size


def mount_name(mount_point: str) -> str:
    """The mount path without its slashes: ``skyflow/insurance`` for ``skyflow/insurance/``.

    The whole path, not its last segment: ``a/insurance`` and ``b/insurance`` are two
    tenants and must not share a label.
    """
    return mount_point.strip("/")


class ApplicationLabels:
    """Bounded labels for the client-supplied ``Application-Source`` header.

    With an allow-list, a value outside it becomes ``other``. Without one, the first
    ``max_values`` distinct values (lower-cased) are kept and later ones become ``other``.
    A missing header is ``none``; a value that is not a short identifier is ``other``.
    """

    NONE = "none"
    OTHER = "other"

    def __init__(self, allowlist: frozenset[str] | None, max_values: int) -> None:
        self._allowlist = allowlist
        self._max_values = max_values
        self._admitted: set[str] = set()
        self._memo: dict[str, str] = {}

    @property
    def admitted(self) -> frozenset[str]:
        """The values admitted under the cardinality cap so far."""
        return frozenset(self._admitted)

    def label(self, raw: str | None) -> str:
        """The label for one header value."""
        if raw is None:
            return self.NONE
        label = self._memo.get(raw)
        if label is not None:
            return label
        value = raw.strip().lower()
        if not value:
            label = self.NONE
        elif not APPLICATION_LABEL.fullmatch(value):
            label = self.OTHER
        elif self._allowlist is not None:
            label = value if value in self._allowlist else self.OTHER
        elif value in self._admitted:
            label = value
        elif len(self._admitted) < self._max_values:
            self._admitted.add(value)
            label = value
        else:
            label = self.OTHER
        if len(raw) <= 128 and len(self._memo) < MAX_LABEL_MEMO:
            self._memo[raw] = label
        return label


def trace_id_from_traceparent(request: Request) -> str:
    """The trace ID of a valid W3C ``traceparent`` passed through to the plugin, else ``""``."""
    values = request.headers.get("traceparent")
    if not values:
        return ""
    match = _TRACEPARENT.fullmatch(values[0].strip().lower())
    if match is None or match.group(1) == "ff" or match.group(2) == "0" * 32:
        return ""
    return match.group(2)


def request_id_label(value: str | None) -> str:
    """Skyflow's request id as a label: printable ASCII only, at most 128 characters."""
    if not value:
        return ""
    return _PRINTABLE.sub("", value)[:_MAX_REQUEST_ID]


def ctx_shape(ctx: object) -> tuple[str, tuple[str, ...]]:
    """``(type, sorted keys)`` of a ctx value; never the values themselves."""
    if ctx is None:
        return "none", ()
    if isinstance(ctx, Mapping):
        keys = tuple(sorted(str(key)[:64] for key in ctx))[:_MAX_CTX_KEYS]
        return ("map", keys) if keys else ("none", ())
    if isinstance(ctx, bool):
        return "bool", ()
    if isinstance(ctx, int | float):
        return "number", ()
    if isinstance(ctx, str):
        return ("string", ()) if ctx.strip() else ("none", ())
    return "other", ()
