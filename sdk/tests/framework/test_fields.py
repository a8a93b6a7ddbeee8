"""Field parsing: every type accepts its JSON form and its query-string spelling."""

from __future__ import annotations

from typing import Any

import pytest

from vault_plugin_sdk.framework import Field, FieldError, FieldType


def parse(kind: FieldType, raw: object, **options: Any) -> Any:
    return Field(kind, "test field", **options).parse("f", raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(90, 90), ("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), (0, 0)],
)
def test_duration_accepts_seconds_and_go_style_strings(raw: object, expected: int) -> None:
    assert parse(FieldType.DURATION, raw) == expected


@pytest.mark.parametrize("raw", ["", "5x", "m5", "-5", -1, True, None, [], "5m junk"])
def test_duration_rejects_garbage_naming_the_field(raw: object) -> None:
    with pytest.raises(FieldError) as info:
        parse(FieldType.DURATION, raw)
    assert info.value.field == "f"
    assert "'f'" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("a,b", ["a", "b"]), (["a", "b"], ["a", "b"]), (" a , ,b ", ["a", "b"]), ("", [])],
)
def test_comma_string_list_accepts_both_forms(raw: object, expected: list[str]) -> None:
    assert parse(FieldType.COMMA_STRING_LIST, raw) == expected


@pytest.mark.parametrize("raw", [5, {"a": 1}, ["a", 3], None, ["a", ""], ["a", "  "]])
def test_comma_string_list_rejects_other_types(raw: object) -> None:
    with pytest.raises(FieldError):
        parse(FieldType.COMMA_STRING_LIST, raw)


@pytest.mark.parametrize(
    ("raw", "expected"), [(True, True), ("true", True), ("0", False), ("F", False), (1, True)]
)
def test_bool_accepts_go_spellings(raw: object, expected: bool) -> None:
    assert parse(FieldType.BOOL, raw) is expected


@pytest.mark.parametrize("raw", ["yes", 2, None, [], "truthy"])
def test_bool_rejects_others(raw: object) -> None:
    with pytest.raises(FieldError):
        parse(FieldType.BOOL, raw)


def test_int_parsing() -> None:
    assert parse(FieldType.INT, "42") == 42
    assert parse(FieldType.INT, 42.0) == 42
    for bad in ("4.2", True, "", "1e3", None):
        with pytest.raises(FieldError):
            parse(FieldType.INT, bad)


def test_string_accepts_scalars_only() -> None:
    assert parse(FieldType.STRING, "x") == "x"
    assert parse(FieldType.STRING, 7) == "7"
    with pytest.raises(FieldError, match="expected a string, got an object"):
        parse(FieldType.STRING, {"a": 1})


def test_map_accepts_object_or_its_json_text() -> None:
    assert parse(FieldType.MAP, {"a": 1}) == {"a": 1}
    assert parse(FieldType.MAP, '{"a": 1}') == {"a": 1}
    for bad in ("[1]", "nope", 3, ["a"]):
        with pytest.raises(FieldError):
            parse(FieldType.MAP, bad)


def test_name_pattern() -> None:
    assert parse(FieldType.NAME, "consumer-analytics") == "consumer-analytics"
    assert parse(FieldType.NAME, "a.b@c_d") == "a.b@c_d"
    for bad in ("-lead", "trail-", "sp ace", "sl/ash", ""):
        with pytest.raises(FieldError):
            parse(FieldType.NAME, bad)


def test_string_or_map() -> None:
    assert parse(FieldType.STRING_OR_MAP, "u1") == "u1"
    assert parse(FieldType.STRING_OR_MAP, {"k": "v"}) == {"k": "v"}
    with pytest.raises(FieldError):
        parse(FieldType.STRING_OR_MAP, ["x"])


def test_max_length_and_allowed_values_and_validator() -> None:
    with pytest.raises(FieldError, match="longer than 3"):
        parse(FieldType.STRING, "abcd", max_length=3)
    with pytest.raises(FieldError, match="one of: a, b"):
        parse(FieldType.STRING, "c", allowed_values=("a", "b"))

    def positive(value: int) -> None:
        if value <= 0:
            raise ValueError("must be positive")

    with pytest.raises(FieldError, match="must be positive"):
        parse(FieldType.INT, 0, validator=positive)


def test_defaults_are_copied() -> None:
    spec = Field(FieldType.COMMA_STRING_LIST, "d", default=["x"])
    first = spec.default_value()
    first.append("y")
    assert spec.default_value() == ["x"]


def test_map_text_nested_beyond_the_parser_is_a_field_error() -> None:
    with pytest.raises(FieldError, match="expected a JSON object"):
        parse(FieldType.MAP, "[" * 100_000 + "]" * 100_000)


def test_string_or_map_reads_json_object_text_as_the_object() -> None:
    # What `bao write .../creds/r ctx='{"user_id":"u1"}'` sends: a string, meant as the map.
    assert parse(FieldType.STRING_OR_MAP, '{"user_id":"u1"}') == {"user_id": "u1"}
    assert parse(FieldType.STRING_OR_MAP, '  {"a": {"b": [1]}}') == {"a": {"b": [1]}}
    # A literal newline inside a string value (a pasted PEM) is still that object.
    assert parse(FieldType.STRING_OR_MAP, '{"k": "line1\nline2"}') == {"k": "line1\nline2"}
    # Other strings stay strings, JSON-looking or not.
    assert parse(FieldType.STRING_OR_MAP, "user-1") == "user-1"
    assert parse(FieldType.STRING_OR_MAP, '["a"]') == '["a"]'
    assert parse(FieldType.STRING_OR_MAP, "") == ""


@pytest.mark.parametrize("text", ["{user_id:u1}", '{"user_id": "u1"', "{", '{"a": 1} x'])
def test_string_or_map_refuses_broken_object_text_showing_the_quoting(text: str) -> None:
    # `bao write ... ctx={"user_id":"u1"}` without single quotes: the shell eats the double
    # quotes and the plugin receives {user_id:u1}.
    with pytest.raises(FieldError) as caught:
        parse(FieldType.STRING_OR_MAP, text)
    message = str(caught.value)
    assert "not a valid JSON object" in message
    assert """f='{"key":"value"}'""" in message  # the CLI form, for the field's own name
    assert '{"f": {"key": "value"}}' in message  # the JSON body form
    assert "user_id" not in message  # the value itself is never echoed
