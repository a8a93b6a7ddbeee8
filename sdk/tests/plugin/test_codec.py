"""How errors and responses are put on the wire."""

from __future__ import annotations

import json

from vault_plugin_sdk.framework import (
    BadRequest,
    CodedError,
    PermissionDenied,
    ReadOnlyStorageError,
    Response,
    UnsupportedOperation,
    UnsupportedPath,
)
from vault_plugin_sdk.plugin.codec import (
    INTERNAL_ERROR_MESSAGE,
    decode_request,
    encode_error,
    encode_response,
)
from vault_plugin_sdk.plugin.pb import backend_pb2 as pb
from vault_plugin_sdk.testing import InMemoryStorage


def test_error_types_map_to_host_statuses() -> None:
    assert encode_error(BadRequest("x")).err_type == 4
    assert encode_error(PermissionDenied()).err_type == 8
    assert encode_error(UnsupportedPath()).err_type == 6
    assert encode_error(UnsupportedOperation()).err_type == 5
    coded = encode_error(CodedError(503, "down"))
    assert (coded.err_type, coded.err_code, coded.err_msg) == (3, 503, "down")


def test_unexpected_exceptions_hide_their_text() -> None:
    error = encode_error(RuntimeError("secret -----BEGIN " + "PRIVATE KEY----- detail"))
    assert (error.err_type, error.err_msg) == (2, INTERNAL_ERROR_MESSAGE)


def test_read_only_storage_carries_the_text_that_makes_the_host_forward() -> None:
    # OpenBao forwards a request to the active node when the error contains this text.
    error = encode_error(ReadOnlyStorageError("storage put failed: read-only"))
    assert error.err_msg == "cannot write to readonly storage"


def test_responses_always_carry_json_data() -> None:
    assert not encode_response(None).HasField("response")
    empty = encode_response(Response())
    assert json.loads(empty.response.data) == {}
    warned = encode_response(Response(data={"a": 1}, warnings=["w"]))
    assert list(warned.response.warnings) == ["w"]


def test_decode_request_lowercases_headers_and_keeps_no_token() -> None:
    message = pb.Request(
        operation="read",
        path="creds/x",
        data='{"ctx": "u"}',
        client_token="s.secret",
        entity_id="e1",
        mount_point="skyflow/a/",
    )
    message.headers["Application-Source"].header.append("billing")
    request = decode_request(message, InMemoryStorage())
    assert request.data == {"ctx": "u"}
    assert request.header("application-source") == "billing"
    assert request.entity_id == "e1"
    assert "s.secret" not in repr(request)


def test_null_data_is_an_empty_mapping() -> None:
    request = decode_request(pb.Request(operation="read", data="null"), InMemoryStorage())
    assert request.data == {}


def test_data_nested_beyond_the_parser_is_a_400_naming_the_field() -> None:
    import pytest

    from vault_plugin_sdk.framework import FieldError

    deep = '{"ok": 1, "ctx": {"k": ' + "[" * 5000 + "]" * 5000 + "}}"
    with pytest.raises(FieldError) as info:
        decode_request(pb.Request(operation="update", data=deep), InMemoryStorage())
    assert info.value.field == "ctx"


def test_too_deep_field_ignores_brackets_inside_strings() -> None:
    from vault_plugin_sdk.plugin.codec import too_deep_field

    assert too_deep_field('{"a": "' + "[" * 500 + '"}') is None
    assert too_deep_field('{"a\\"b": ' + "[" * 200 + "]" * 200 + "}") == 'a"b'
