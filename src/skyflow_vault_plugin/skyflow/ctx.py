"""The ``ctx`` claim: what a caller may pass, and its stable text form for cache keys.

A ``ctx`` is a string, number, bool or a map of ``[A-Za-z0-9_]+`` keys to JSON values, at
most :data:`MAX_CTX_BYTES` of JSON and :data:`MAX_CTX_DEPTH` levels deep. The same checks run
before a value goes into an assertion (:mod:`.assertion`) and before it becomes part of a cache
key (:func:`canonical_ctx`), so both see one value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, TypeAlias

from .errors import InvalidContext, short_repr

__all__ = [
    "CTX_KEY",
    "MAX_CTX_BYTES",
    "MAX_CTX_DEPTH",
    "Ctx",
    "JSONValue",
    "canonical_ctx",
    "validate_ctx",
]

CTX_KEY = re.compile(r"[A-Za-z0-9_]+")
MAX_CTX_BYTES = 8 * 1024  # ctx becomes part of cache keys; keep it bounded
MAX_CTX_DEPTH = 8

JSONScalar: TypeAlias = str | int | float | bool | None
JSONValue: TypeAlias = JSONScalar | list["JSONValue"] | dict[str, "JSONValue"]
Ctx: TypeAlias = str | int | float | bool | Mapping[str, Any]
"""What a caller may pass as ``ctx``: a string, number, bool, or a map of ``[A-Za-z0-9_]+`` keys."""


def validate_ctx(ctx: object) -> str | int | float | bool | dict[str, JSONValue] | None:
    """Validate a ``ctx`` value and return what goes into the assertion, or None to omit it.

    A blank string and an empty map are dropped (as the SDK does). Map keys must match
    ``^[a-zA-Z0-9_]+$``; values may be any JSON value. Raises :class:`InvalidContext`.
    """
    if ctx is None:
        return None
    if isinstance(ctx, str):
        if not ctx.strip():
            return None
        _check_size(ctx)
        return ctx
    if isinstance(ctx, bool | int):
        return ctx
    if isinstance(ctx, float):
        if not math.isfinite(ctx):
            raise InvalidContext("must be a finite number")
        return ctx
    if isinstance(ctx, Mapping):
        if not ctx:
            return None
        for key in ctx:
            # fullmatch, not re.match with "$": "$" would also accept a trailing newline
            if not isinstance(key, str) or not CTX_KEY.fullmatch(key):
                raise InvalidContext(
                    f"map key {short_repr(key)} must match ^[a-zA-Z0-9_]+$ "
                    "(letters, digits and underscores)"
                )
        value = {key: _json_value(item, 1) for key, item in ctx.items()}
        _check_size(value)
        return value
    raise InvalidContext(f"must be a string, number, boolean or map, not {type(ctx).__name__}")


def canonical_ctx(ctx: object) -> str:
    """Return a stable text form of a ``ctx`` (sorted-key JSON) for cache keys; ``""`` if none."""
    value = validate_ctx(ctx)
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _json_value(value: object, depth: int) -> JSONValue:
    if depth > MAX_CTX_DEPTH:
        raise InvalidContext(f"is nested more than {MAX_CTX_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidContext("numbers must be finite")
        return value
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidContext("nested map keys must be strings")
            out[key] = _json_value(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(item, depth + 1) for item in value]
    raise InvalidContext(f"values must be JSON values, not {type(value).__name__}")


def _check_size(value: JSONValue) -> None:
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_CTX_BYTES:
        raise InvalidContext(f"is larger than {MAX_CTX_BYTES} bytes")
