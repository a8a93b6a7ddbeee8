"""Typed request fields: the closed set of types a path may declare, and their parsing.

Values arrive as JSON from the request body (POST/PUT) or as strings from the query string
(GET/LIST), so every parser accepts the string spelling of its type, as Vault's weak decoding
does (``"true"``, ``"42"``, ``"5m"``, ``"a,b"``).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._records import dataclass_methods, set_field
from .errors import FieldError


class FieldType(enum.Enum):
    """The kinds of value a field may hold."""

    STRING = "string"
    INT = "int"
    BOOL = "bool"
    DURATION = "duration"  # whole seconds; accepts 90, "90", "90s", "5m", "1h30m"
    COMMA_STRING_LIST = "comma_string_list"  # accepts "a,b" or ["a", "b"]
    MAP = "map"  # a JSON object (or its JSON text)
    NAME = "name"  # a path-safe identifier, as used in path patterns
    STRING_OR_MAP = "string_or_map"  # a string, or a JSON object


NAME_PATTERN = r"\w(([\w.@-]*)?\w)?"
"""Regex for names used as path parts (Vault's ``GenericNameRegex``)."""

_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class Field:
    """A field a path accepts: its type, its help text and its default.

    ``description`` is shown by ``path-help`` and must say what the field means.
    ``required`` makes the framework refuse a request without it (for the operations where
    the path calls :meth:`FieldData.require`). ``query`` marks a field that may also come
    from the query string of a write.
    """

    type: FieldType
    description: str
    default: Any = None
    required: bool = False
    allowed_values: tuple[Any, ...] = ()
    max_length: int | None = None
    validator: Callable[[Any], None] | None = None

    def __init__(
        self,
        type: FieldType,
        description: str,
        default: Any = None,
        required: bool = False,
        allowed_values: tuple[Any, ...] = (),
        max_length: int | None = None,
        validator: Callable[[Any], None] | None = None,
    ) -> None:
        # Written out rather than generated: see _records.
        set_field(self, "type", type)
        set_field(self, "description", description)
        set_field(self, "default", default)
        set_field(self, "required", required)
        set_field(self, "allowed_values", allowed_values)
        set_field(self, "max_length", max_length)
        set_field(self, "validator", validator)

    def parse(self, name: str, raw: object) -> Any:
        """Convert ``raw`` to this field's type, raising :class:`FieldError` naming ``name``."""
        value = _PARSERS[self.type](name, raw)
        if self.max_length is not None:
            size = _size_of(value)
            if size > self.max_length:
                raise FieldError(name, f"longer than {self.max_length} characters")
        if self.allowed_values and value not in self.allowed_values:
            allowed = ", ".join(str(v) for v in self.allowed_values)
            raise FieldError(name, f"must be one of: {allowed}")
        if self.validator is not None:
            try:
                self.validator(value)
            except FieldError:
                raise
            except ValueError as exc:
                raise FieldError(name, str(exc)) from None
        return value

    def default_value(self) -> Any:
        """The value used when the request does not give the field (copied for lists/maps)."""
        if isinstance(self.default, list):
            return list(self.default)
        if isinstance(self.default, dict):
            return dict(self.default)
        return self.default


def _size_of(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value)
    if isinstance(value, dict):
        return len(json.dumps(value))
    return 0


def parse_string(name: str, raw: object) -> str:
    """A string; numbers and booleans are accepted in their JSON spelling."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return json.dumps(raw)
    raise FieldError(name, f"expected a string, got {_json_type(raw)}")


def parse_int(name: str, raw: object) -> int:
    """An integer, from a JSON number without fraction or its decimal string."""
    if isinstance(raw, bool):
        raise FieldError(name, "expected an integer, got a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"[+-]?\d{1,18}", raw.strip()):
        return int(raw.strip())
    raise FieldError(name, "expected an integer")


def parse_bool(name: str, raw: object) -> bool:
    """A boolean: true/false, or the strings Go's strconv.ParseBool accepts."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered in ("1", "t", "true"):
            return True
        if lowered in ("0", "f", "false"):
            return False
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise FieldError(name, "expected a boolean (true or false)")


def parse_duration(name: str, raw: object) -> int:
    """A non-negative duration in whole seconds: ``90``, ``"90s"``, ``"5m"``, ``"1h30m"``."""
    if isinstance(raw, bool):
        raise FieldError(name, "expected a duration such as 90, '90s' or '5m'")
    seconds: float
    if isinstance(raw, int | float):
        seconds = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise FieldError(name, "expected a duration such as 90, '90s', '5m' or '1h30m'")
    else:
        raise FieldError(name, "expected a duration such as 90, '90s' or '5m'")
    if not math.isfinite(seconds) or seconds < 0 or seconds > 10 * 365 * 86400:
        raise FieldError(name, "duration out of range")
    return int(seconds)


def parse_comma_string_list(name: str, raw: object) -> list[str]:
    """A list of strings from ``"a,b"`` or ``["a", "b"]``; items are trimmed. Empty items
    between commas are dropped; a blank item of a JSON list is refused."""
    items: list[object]
    if isinstance(raw, str):
        items = list(raw.split(","))
    elif isinstance(raw, list):
        items = list(raw)
    else:
        raise FieldError(
            name, f"expected a comma-separated string or a list, got {_json_type(raw)}"
        )
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise FieldError(name, f"list items must be strings, got {_json_type(item)}")
        stripped = item.strip()
        if stripped:
            result.append(stripped)
        elif isinstance(raw, list):
            # In a JSON list a blank item was given on purpose: it is an error, not noise
            # between commas as in "a,,b".
            raise FieldError(name, "list items must not be blank")
    return result


def parse_map(name: str, raw: object) -> dict[str, Any]:
    """A JSON object, given as an object or as its JSON text."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise FieldError(name, "expected a JSON object") from None
    if not isinstance(raw, dict):
        raise FieldError(name, f"expected a JSON object, got {_json_type(raw)}")
    return raw


def parse_name(name: str, raw: object) -> str:
    """A name usable as a path part: letters, digits, ``_``, ``.``, ``@`` and ``-``."""
    value = parse_string(name, raw)
    if not _NAME_RE.match(value):
        raise FieldError(name, "must be letters, digits, '_', '.', '@' or '-'")
    return value


def parse_string_or_map(name: str, raw: object) -> str | dict[str, Any]:
    """Either a string or a JSON object.

    Command-line clients (``bao write path key=value``, query strings) can only send
    strings, so a string whose first non-blank character is ``{`` is read as the JSON text
    of an object, as Vault's framework reads map-like fields given as JSON text: it becomes
    the object, or, when it is not a valid JSON object, a 400 that shows how to quote it.
    It never silently stays a string. Any other string stays a string.
    """
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        if not raw.lstrip().startswith("{"):
            return raw
        try:
            # strict=False: a value pasted with literal newlines inside a string (a PEM key)
            # is still the object that was meant.
            decoded = json.loads(raw, strict=False)
        except (ValueError, RecursionError) as exc:
            # Only the decoder's position is quoted, never the value (it may be a secret).
            where = ""
            if isinstance(exc, json.JSONDecodeError):
                where = f" ({exc.msg} at line {exc.lineno} column {exc.colno})"
            raise FieldError(
                name,
                f"starts with '{{' but is not a valid JSON object{where}; send the object "
                f"as JSON text with double-quoted keys and string values, quoted for the "
                f'shell as a whole: {name}=\'{{"key":"value"}}\' with the bao CLI, or '
                f'{{"{name}": {{"key": "value"}}}} in a JSON request body',
            ) from None
        if not isinstance(decoded, dict):  # cannot happen for text starting with "{"
            raise FieldError(name, "starts with '{' but is not a JSON object")
        return decoded
    raise FieldError(name, f"expected a string or a JSON object, got {_json_type(raw)}")


def _json_type(raw: object) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int | float):
        return "a number"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, Mapping):
        return "an object"
    return type(raw).__name__


_PARSERS: dict[FieldType, Callable[[str, object], Any]] = {
    FieldType.STRING: parse_string,
    FieldType.INT: parse_int,
    FieldType.BOOL: parse_bool,
    FieldType.DURATION: parse_duration,
    FieldType.COMMA_STRING_LIST: parse_comma_string_list,
    FieldType.MAP: parse_map,
    FieldType.NAME: parse_name,
    FieldType.STRING_OR_MAP: parse_string_or_map,
}
