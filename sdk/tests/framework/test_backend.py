"""Routing, existence checks, field errors, unknown fields, help and lifecycle hooks."""

from __future__ import annotations

import pytest

from vault_plugin_sdk import framework
from vault_plugin_sdk.framework.help import display_pattern
from vault_plugin_sdk.testing import InMemoryStorage


async def echo(req: framework.Request, data: framework.FieldData) -> framework.Response | None:
    return framework.Response(data={"name": data.get("name"), "count": data.get("count")})


async def teapot(req: framework.Request, data: framework.FieldData) -> framework.Response | None:
    raise framework.CodedError(418, "short and stout")


async def exists(req: framework.Request, data: framework.FieldData) -> bool:
    return bool(data.get("name") == "present")


def make_backend(*, strict: bool = False) -> tuple[framework.Backend, list[str]]:
    events: list[str] = []

    async def on_invalidate(key: str) -> None:
        events.append(f"invalidate:{key}")

    async def on_cleanup() -> None:
        events.append("cleanup")

    backend = framework.Backend(
        help="Test backend.",
        storage=InMemoryStorage(),
        paths=[
            framework.Path(
                pattern=f"items/{framework.name_part('name')}",
                fields={
                    "name": framework.Field(framework.FieldType.NAME, "The item."),
                    "count": framework.Field(framework.FieldType.INT, "How many.", default=1),
                },
                operations={
                    framework.Operation.READ: framework.OperationHandler(echo, "Read."),
                    framework.Operation.UPDATE: framework.OperationHandler(echo, "Update."),
                },
                existence_check=exists,
                help_synopsis="One item.",
                reject_unknown_fields=strict,
            ),
            framework.Path(
                pattern="teapot",
                operations={framework.Operation.READ: framework.OperationHandler(teapot, "Brew.")},
            ),
        ],
        invalidate=on_invalidate,
        cleanup=on_cleanup,
    )
    return backend, events


def request(op: str, path: str, data: dict[str, object] | None = None) -> framework.Request:
    return framework.Request(
        operation=op, path=path, storage=InMemoryStorage(), data=dict(data or {})
    )


async def test_routes_by_pattern_and_fills_named_parts_and_defaults() -> None:
    backend, _ = make_backend()
    response = await backend.handle_request(request("read", "items/widget"))
    assert response is not None
    assert response.data == {"name": "widget", "count": 1}


async def test_query_string_values_are_parsed_to_the_field_type() -> None:
    backend, _ = make_backend()
    response = await backend.handle_request(request("read", "items/w", {"count": "7"}))
    assert response is not None
    assert response.data["count"] == 7


async def test_bad_field_value_is_an_error_response_naming_the_field() -> None:
    backend, _ = make_backend()
    response = await backend.handle_request(request("update", "items/w", {"count": "many"}))
    assert response is not None
    assert response.is_error
    assert "'count'" in response.data["error"]


async def test_unknown_fields_warn_by_default_and_fail_when_strict() -> None:
    backend, _ = make_backend()
    response = await backend.handle_request(request("update", "items/w", {"colour": "red"}))
    assert response is not None
    assert response.warnings == ["Endpoint ignored these unrecognized parameters: ['colour']"]

    strict, _ = make_backend(strict=True)
    response = await strict.handle_request(request("update", "items/w", {"colour": "red"}))
    assert response is not None
    assert response.is_error
    assert "'colour'" in response.data["error"]


async def test_unknown_field_names_the_closest_known_field() -> None:
    strict, _ = make_backend(strict=True)
    known = sorted(f for f in strict.paths[0].fields if f not in strict.paths[0].regex.groupindex)
    typo = known[0][:-1] + "x" + known[0][-1]  # one letter too many
    response = await strict.handle_request(request("update", "items/w", {typo: "1"}))
    assert response is not None
    assert response.is_error
    assert f"did you mean '{known[0]}'?" in response.data["error"]

    response = await strict.handle_request(request("update", "items/w", {"zzzzzzzz": "1"}))
    assert response is not None
    assert response.is_error
    assert "did you mean" not in response.data["error"]
    assert f"it takes: {', '.join(known)}" in response.data["error"]


async def test_unknown_path_and_operation() -> None:
    backend, _ = make_backend()
    with pytest.raises(framework.UnsupportedPath):
        await backend.handle_request(request("read", "nothing/here"))
    with pytest.raises(framework.UnsupportedOperation):
        await backend.handle_request(request("delete", "items/w"))
    with pytest.raises(framework.UnsupportedOperation):
        await backend.handle_request(request("resolve-path", "items/w"))


async def test_coded_errors_propagate_with_their_status() -> None:
    backend, _ = make_backend()
    with pytest.raises(framework.CodedError) as info:
        await backend.handle_request(request("read", "teapot"))
    assert info.value.status == 418


async def test_existence_check() -> None:
    backend, _ = make_backend()
    assert await backend.handle_existence_check(request("update", "items/present")) == (
        True,
        True,
    )
    assert await backend.handle_existence_check(request("update", "items/absent")) == (
        True,
        False,
    )
    assert await backend.handle_existence_check(request("update", "teapot")) == (False, False)


async def test_help_for_a_path_and_for_the_mount() -> None:
    backend, _ = make_backend()
    path_help = await backend.handle_request(request("help", "items/w"))
    assert path_help is not None
    text = path_help.data["help"]
    assert "Request:        items/<name>" in text
    assert "count (int), default: 1" in text
    assert "read: Read." in text
    root_help = await backend.handle_request(request("help", ""))
    assert root_help is not None
    assert "Test backend." in root_help.data["help"]
    assert "One item." in root_help.data["help"]


async def test_rollback_on_the_mount_root_is_ignored() -> None:
    backend, _ = make_backend()
    assert await backend.handle_request(request("rollback", "")) is None


async def test_hooks_and_idempotent_cleanup() -> None:
    backend, events = make_backend()
    await backend.invalidate("config")
    await backend.cleanup()
    await backend.cleanup()
    assert events == ["invalidate:config", "cleanup"]


def test_pattern_groups_must_have_fields() -> None:
    with pytest.raises(ValueError, match="has no field"):
        framework.Path(pattern=f"x/{framework.name_part('name')}", operations={})


def test_display_pattern() -> None:
    assert display_pattern(f"roles/{framework.name_part('name')}") == "roles/<name>"
    assert display_pattern("roles/?") == "roles/"


def test_response_with_status_carries_a_raw_body() -> None:
    wire = framework.Response(data={"healthy": False}, status=503).wire_data()
    assert wire["http_status_code"] == 503
    assert '"healthy": false' in wire["http_raw_body"]


def test_error_responses_follow_the_hosts_rule() -> None:
    # The host answers 400 only for data holding `error` alone or `error` and `data`
    # (logical.ErrorResponse); any other key next to `error` is an ordinary 200 reply.
    assert framework.Response.error("bad").data == {"error": "bad"}
    detailed = framework.Response.error("bad", data={"field": "ttl"})
    assert detailed.data == {"error": "bad", "data": {"field": "ttl"}}
    assert detailed.is_error
    assert not framework.Response(data={"error": "bad", "field": "ttl"}).is_error
    assert not framework.Response(data={"error": "bad"}, status=503).is_error


async def test_help_carries_openapi_for_the_mount_and_for_one_path() -> None:
    backend, _ = make_backend()
    root = await backend.handle_request(request("help", ""))
    assert root is not None
    paths = root.data["openapi"]["paths"]
    assert set(paths) == {
        "/" + display_pattern(p.pattern).replace("<", "{").replace(">", "}") for p in backend.paths
    }
    one = await backend.handle_request(request("help", "items/w"))
    assert one is not None
    (item,) = one.data["openapi"]["paths"].values()
    assert item["description"] == "One item."
    assert item["parameters"][0]["in"] == "path"
    assert item["parameters"][0]["required"] is True
