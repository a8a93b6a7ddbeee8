"""The OpenAPI document of a backend's paths, as help responses carry it.

The host builds ``sys/internal/specs/openapi`` (read by the web UI and client generators) by
sending each mount a ``help`` request for its root and reading ``openapi`` from the reply; a
plugin's document arrives as JSON and is decoded into Vault's ``framework.OASDocument``. This
module writes the parts of that document which Vault's own framework writes for a path
(``sdk/framework/openapi.go``): one path item per pattern with its synopsis, path
parameters with type and description, and per operation (``get``, ``post``, ``delete``) its
summary, the request body's fields and a default response.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .fields import NAME_PATTERN, Field, FieldType
from .help import display_pattern
from .path import Path
from .request import Operation

OAS_VERSION = "3.0.2"  # the version Vault's framework declares

# Vault's convertType: (type, format, pattern, items) per field type.
_TYPES: Mapping[FieldType, tuple[str, str, str, str]] = {
    FieldType.STRING: ("string", "", "", ""),
    FieldType.INT: ("integer", "", "", ""),
    FieldType.BOOL: ("boolean", "", "", ""),
    FieldType.DURATION: ("string", "duration", "", ""),
    FieldType.COMMA_STRING_LIST: ("array", "", "", "string"),
    FieldType.MAP: ("object", "", "", ""),
    FieldType.NAME: ("string", "", NAME_PATTERN, ""),
    FieldType.STRING_OR_MAP: ("string", "", "", ""),
}


def field_schema(spec: Field, *, with_description: bool) -> dict[str, Any]:
    """The OpenAPI schema of one field."""
    kind, fmt, pattern, items = _TYPES[spec.type]
    schema: dict[str, Any] = {"type": kind}
    if with_description and spec.description:
        schema["description"] = _clean(spec.description)
    if fmt:
        schema["format"] = fmt
    if pattern:
        schema["pattern"] = pattern
    if items:
        schema["items"] = {"type": items}
    if spec.allowed_values:
        schema["enum"] = list(spec.allowed_values)
    if spec.default not in (None, "", [], {}):
        schema["default"] = spec.default
    return schema


def openapi_paths(paths: Sequence[Path], *, tag: str = "secrets") -> dict[str, Any]:
    """The ``paths`` object: one item per path pattern, keyed ``/pattern/{name}``."""
    out: dict[str, Any] = {}
    for path in paths:
        route = "/" + re.sub(r"<(\w+)>", r"{\1}", display_pattern(path.pattern))
        in_path = set(path.regex.groupindex)
        item: dict[str, Any] = {}
        if path.help_synopsis:
            item["description"] = _clean(path.help_synopsis)
        parameters = [
            {
                "name": name,
                "description": _clean(path.fields[name].description),
                "in": "path",
                "schema": field_schema(path.fields[name], with_description=False),
                "required": True,
            }
            for name in sorted(in_path, key=str.lower)
        ]
        if parameters:
            item["parameters"] = parameters
        body = {n: f for n, f in path.fields.items() if n not in in_path}
        ops = path.operations
        if Operation.CREATE in ops:
            item["x-vault-createSupported"] = True
        operation_id = _operation_id(route)
        if Operation.READ in ops:
            item["get"] = _operation(ops[Operation.READ].summary, tag, f"read-{operation_id}")
            if Operation.LIST in ops:
                item["get"]["parameters"] = [_list_parameter(required=False)]
        elif Operation.LIST in ops:
            item["get"] = _operation(ops[Operation.LIST].summary, tag, f"list-{operation_id}")
            item["get"]["parameters"] = [_list_parameter(required=True)]
        write = ops.get(Operation.UPDATE) or ops.get(Operation.CREATE)
        if write is not None:
            item["post"] = _operation(write.summary, tag, f"write-{operation_id}")
            if body:
                item["post"]["requestBody"] = _request_body(body)
        if Operation.DELETE in ops:
            item["delete"] = _operation(
                ops[Operation.DELETE].summary, tag, f"delete-{operation_id}", status="204"
            )
        out[route] = item
    return out


def openapi_document(paths: Sequence[Path], *, title: str, tag: str = "secrets") -> dict[str, Any]:
    """A whole OpenAPI document for ``paths`` (the host keeps only its ``paths``)."""
    return {
        "openapi": OAS_VERSION,
        "info": {"title": title, "description": "", "version": "", "license": {}},
        "paths": openapi_paths(paths, tag=tag),
        "components": {"schemas": {}},
    }


def _operation(summary: str, tag: str, operation_id: str, status: str = "200") -> dict[str, Any]:
    description = "OK" if status == "200" else "empty body"
    return {
        "summary": _clean(summary),
        "operationId": operation_id,
        "tags": [tag],
        "responses": {status: {"description": description}},
    }


def _request_body(fields: Mapping[str, Field]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            name: field_schema(spec, with_description=True) for name, spec in sorted(fields.items())
        },
    }
    required = sorted(name for name, spec in fields.items() if spec.required)
    if required:
        schema["required"] = required
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _list_parameter(*, required: bool) -> dict[str, Any]:
    return {
        "name": "list",
        "description": "Must be set to `true`" if required else "Return a list if `true`",
        "in": "query",
        "schema": {"type": "string", "enum": ["true"]} if required else {"type": "string"},
        "required": required,
    }


def _operation_id(route: str) -> str:
    words = re.sub(r"[^\w]+", "-", route.replace("{", "").replace("}", "")).strip("-")
    return words or "root"


def _clean(text: str) -> str:
    return " ".join(text.split())
