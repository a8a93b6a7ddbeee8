"""OpenBao's OpenAPI document (``sys/internal/specs/openapi``, read by the web UI and client
generators) lists a Skyflow mount's paths with their fields, types and descriptions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import SkyflowStack, UnitMount

pytestmark = pytest.mark.e2e


def _body(operation: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
    return schema


def test_the_openapi_document_describes_a_skyflow_mount(
    stack: SkyflowStack, unit_mount: UnitMount
) -> None:
    mount = unit_mount("skyflow/openapi")
    spec = stack.client().request("GET", "sys/internal/specs/openapi").json()
    paths = spec["paths"]
    assert {f"/{mount}/config", f"/{mount}/health", f"/{mount}/roles/"} <= set(paths)

    creds = paths[f"/{mount}/creds/{{name}}"]
    assert creds["description"] == "Get a Skyflow bearer token scoped to a role."
    (name,) = creds["parameters"]
    assert (name["name"], name["in"], name["required"]) == ("name", "path", True)
    assert name["description"] == "Name of the role."
    assert creds["get"]["summary"] == "Get a token for the role."
    assert creds["get"]["tags"] == ["secrets"]
    ctx = _body(creds["post"])["properties"]["ctx"]
    assert "context-aware policies" in ctx["description"]

    role = paths[f"/{mount}/roles/{{name}}"]
    role_ids = _body(role["post"])["properties"]["role_ids"]
    assert role_ids["type"] == "array"
    assert role_ids["items"] == {"type": "string"}
    assert "role_ids" in _body(role["post"])["required"]
    assert role["delete"]["summary"]
    assert paths[f"/{mount}/roles/"]["get"]["parameters"][0]["name"] == "list"
