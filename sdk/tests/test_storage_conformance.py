"""One storage suite for every implementation: in memory, and the gRPC client of the host's
Storage service (served by grpclib's server in-process, through the testing helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vault_plugin_sdk.framework import ReadOnlyStorageError, Storage, StorageEntry
from vault_plugin_sdk.plugin.broker_channel import BrokerChannel
from vault_plugin_sdk.plugin.host import GrpcStorage
from vault_plugin_sdk.testing import InMemoryStorage, StorageServer, serve_host_services


@pytest.fixture(params=["memory", "grpc"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Storage, InMemoryStorage]]:
    backing = InMemoryStorage()
    if request.param == "memory":
        yield backing, backing
        return
    async with serve_host_services([StorageServer(backing)]) as socket:
        channel = BrokerChannel("unix", socket, None)
        try:
            yield GrpcStorage(channel), backing
        finally:
            channel.close()


async def test_put_get_delete(storage: tuple[Storage, InMemoryStorage]) -> None:
    store, _ = storage
    assert await store.get("a") is None
    await store.put(StorageEntry("a", b"1", seal_wrap=True))
    entry = await store.get("a")
    assert entry == StorageEntry("a", b"1", seal_wrap=True)
    await store.put(StorageEntry("a", b"2"))
    assert (await store.get("a")) == StorageEntry("a", b"2")
    await store.delete("a")
    await store.delete("a")  # deleting a missing key is fine
    assert await store.get("a") is None


async def test_list_returns_one_level(storage: tuple[Storage, InMemoryStorage]) -> None:
    store, _ = storage
    for key in ["roles/b", "roles/a", "roles/deep/x", "roles/deep/y", "config", "rolesx"]:
        await store.put(StorageEntry(key, b"{}"))
    assert await store.list("roles/") == ["a", "b", "deep/"]
    assert await store.list("") == ["config", "roles/", "rolesx"]
    assert await store.list("nothing/") == []


async def test_json_entries(storage: tuple[Storage, InMemoryStorage]) -> None:
    store, _ = storage
    await store.put(StorageEntry.from_json("j", {"x": [1, 2]}))
    entry = await store.get("j")
    assert entry is not None
    assert entry.json() == {"x": [1, 2]}


async def test_read_only_storage_raises(storage: tuple[Storage, InMemoryStorage]) -> None:
    store, backing = storage
    backing.read_only = True
    with pytest.raises(ReadOnlyStorageError):
        await store.put(StorageEntry("a", b"1"))
    with pytest.raises(ReadOnlyStorageError):
        await store.delete("a")
