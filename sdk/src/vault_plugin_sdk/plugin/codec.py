"""Conversions between the wire messages and the framework's requests and responses."""

from __future__ import annotations

import json
import logging
from typing import Any

from ..framework import errors
from ..framework.request import Request
from ..framework.response import Response
from ..framework.storage import Storage
from .pb import backend_pb2 as pb

# ProtoError.err_type values the host understands (sdk/plugin/pb translation).
ERR_UNKNOWN = 0
ERR_INTERNAL = 2
ERR_CODED = 3
ERR_BAD_REQUEST = 4
ERR_UNSUPPORTED_OPERATION = 5
ERR_UNSUPPORTED_PATH = 6
ERR_PERMISSION_DENIED = 8

INTERNAL_ERROR_MESSAGE = "internal error"
# The host forwards a request to the active node when an error carries this text
# (logical.ErrReadOnly): a write that reaches a standby's plugin must say exactly this.
READ_ONLY_MESSAGE = "cannot write to readonly storage"

log = logging.getLogger("sdk.plugin")


def decode_request(message: pb.Request, storage: Storage) -> Request:
    """A framework request from the wire request; the client token is left out."""
    try:
        data: Any = json.loads(message.data) if message.data else None
    except RecursionError:
        field = too_deep_field(message.data)
        if field is None:
            raise errors.BadRequest("request data is nested too deeply") from None
        raise errors.FieldError(field, "nested too deeply") from None
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise errors.BadRequest("request data must be a JSON object")
    headers = {name.lower(): list(value.header) for name, value in message.headers.items()}
    return Request(
        operation=message.operation,
        path=message.path,
        storage=storage,
        data=data,
        id=message.id,
        mount_point=message.mount_point,
        mount_type=message.mount_type,
        mount_accessor=message.mount_accessor,
        display_name=message.display_name,
        entity_id=message.entity_id,
        client_token_accessor=message.client_token_accessor,
        remote_addr=message.connection.remote_addr,
        remote_port=message.connection.remote_port,
        headers=headers,
    )


def too_deep_field(text: str, limit: int = 100) -> str | None:
    """The top-level key whose value nests deeper than ``limit``, found by scanning the
    JSON text (the parser itself gave up); ``None`` if there is none."""
    depth, key, in_string, escaped, start = 0, None, False, False, 0
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if depth == 1:
                    try:
                        key = json.loads(text[start : index + 1])
                    except ValueError:
                        key = None
            continue
        if char == '"':
            in_string, start = True, index
        elif char in "[{":
            depth += 1
            if depth > limit:
                return key if isinstance(key, str) else None
        elif char in "]}":
            depth -= 1
    return None


# One encoder for every reply: json.dumps with separators builds a new one per call.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def encode_response(response: Response | None) -> pb.HandleRequestReply:
    """The wire reply for a handler's result; ``None`` stays absent (404 on read, 204 on
    write). Data is always valid JSON, since an empty string makes the host answer 500."""
    if response is None:
        return pb.HandleRequestReply()
    wire = pb.Response(data=_encode_json(response.wire_data()))
    if response.warnings and response.status is None:
        wire.warnings.extend(response.warnings)
    return pb.HandleRequestReply(response=wire)


def encode_error(exc: BaseException) -> pb.ProtoError:
    """The wire error for an exception. Unexpected exceptions become a generic internal
    error: their text may hold secrets or internals, so it stays in the plugin's log."""
    if isinstance(exc, errors.ReadOnlyStorageError):
        return pb.ProtoError(err_type=ERR_UNKNOWN, err_msg=READ_ONLY_MESSAGE)
    if isinstance(exc, errors.BadRequest):
        return pb.ProtoError(err_type=ERR_BAD_REQUEST, err_msg=exc.message)
    if isinstance(exc, errors.PermissionDenied):
        return pb.ProtoError(err_type=ERR_PERMISSION_DENIED, err_msg=exc.message)
    if isinstance(exc, errors.UnsupportedPath):
        return pb.ProtoError(err_type=ERR_UNSUPPORTED_PATH, err_msg=exc.message)
    if isinstance(exc, errors.UnsupportedOperation):
        return pb.ProtoError(err_type=ERR_UNSUPPORTED_OPERATION, err_msg=exc.message)
    if isinstance(exc, errors.CodedError | errors.LogicalError):
        return pb.ProtoError(err_type=ERR_CODED, err_msg=exc.message, err_code=exc.status)
    return pb.ProtoError(err_type=ERR_INTERNAL, err_msg=INTERNAL_ERROR_MESSAGE)
