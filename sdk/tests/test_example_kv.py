"""The example plugin's behaviour, run both directly and over the gRPC Backend service.

The same tests with both drivers show that the transport adds nothing and loses nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kv import factory  # sdk/examples/kv.py, put on sys.path by conftest.py
from vault_plugin_sdk.testing import PluginTestClient, open_driver


@pytest.fixture(params=["direct", "grpc"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[PluginTestClient]:
    async with open_driver(request.param, factory) as driver:
        yield PluginTestClient(driver)


async def test_write_read_list_delete(client: PluginTestClient) -> None:
    assert (await client.write("kv/alice", {"value": {"card": "4111"}})).status == 204
    assert (await client.write("kv/bob", {"value": {"card": "5500"}})).status == 204
    read = await client.read("kv/alice")
    assert (read.status, read.data) == (200, {"card": "4111"})
    listed = await client.list("kv/")
    assert listed.data["keys"] == ["alice", "bob"]
    assert (await client.delete("kv/alice")).status == 204
    assert (await client.read("kv/alice")).status == 404


async def test_entries_are_seal_wrapped(client: PluginTestClient) -> None:
    await client.write("kv/alice", {"value": {"a": 1}})
    entry = await client.storage.get("kv/alice")
    assert entry is not None
    assert entry.seal_wrap


async def test_errors(client: PluginTestClient) -> None:
    bad = await client.write("kv/alice", {"value": "not an object"})
    assert bad.status == 400
    assert "'value'" in bad.errors[0]
    assert (await client.read("nothing")).status == 404
    assert (await client.delete("info")).status == 405
    assert (await client.list("kv/")).status == 404  # an empty list reads as not found


async def test_unknown_fields_are_ignored_with_a_warning(client: PluginTestClient) -> None:
    outcome = await client.write("kv/a", {"value": {"x": 1}})
    assert outcome.status == 204
    outcome = await client.read("kv/a", {"colour": "red"})
    assert outcome.warnings == ["Endpoint ignored these unrecognized parameters: ['colour']"]


async def test_help(client: PluginTestClient) -> None:
    assert "Read and write one entry." in await client.help("kv/alice")
    assert "A tiny key/value store" in await client.help("")


async def test_request_metadata_reaches_the_handler(client: PluginTestClient) -> None:
    outcome = await client.read("info")
    assert outcome.data == {"mount_point": "test/", "version": "v0.1.0"}
