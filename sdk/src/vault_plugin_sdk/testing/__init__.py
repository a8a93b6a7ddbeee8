"""Helpers to test a backend without a server: in-memory storage, and two drivers that
answer like the host does -- one calling the backend directly, one over the real gRPC
Backend service and the plugin's own transport in-process (a unix socket in a temporary
directory, no TLS), with storage and the system view served back over gRPC too: by
grpclib's server, an HTTP/2 stack independent of the plugin's broker client.

Run the same suite with both drivers to show that the transport changes nothing::

    @pytest.fixture(params=["direct", "grpc"])
    async def client(request):
        async with open_driver(request.param, factory) as driver:
            yield PluginTestClient(driver)
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from grpclib.client import Channel
from grpclib.server import Server, Stream

from ..framework.backend import Backend, BackendConfig, BackendFactory
from ..framework.errors import BadRequest, StorageError
from ..framework.storage import StorageEntry
from ..framework.system_view import StaticSystemView, SystemView
from ..plugin.broker import Broker
from ..plugin.broker_channel import BrokerChannel
from ..plugin.codec import encode_error, encode_response
from ..plugin.pb import backend_grpc
from ..plugin.pb import backend_pb2 as pb
from ..plugin.servable import Servable
from ..plugin.services import MULTIPLEX_ID_KEY, BackendService
from ..plugin.transport import GrpcServer


class InMemoryStorage:
    """A :class:`~vault_plugin_sdk.framework.storage.Storage` in a dict.

    ``read_only`` makes writes fail like a standby's storage; ``puts`` counts writes.
    """

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._entries: dict[str, StorageEntry] = {}
        self.read_only = False
        self.puts = 0

    async def get(self, key: str) -> StorageEntry | None:
        return self._entries.get(key)

    async def put(self, entry: StorageEntry) -> None:
        self._check_writable()
        if entry.key not in self._entries:
            bisect.insort(self._keys, entry.key)
        self._entries[entry.key] = entry
        self.puts += 1

    async def delete(self, key: str) -> None:
        self._check_writable()
        if self._entries.pop(key, None) is not None:
            self._keys.remove(key)

    async def list(self, prefix: str) -> list[str]:
        found: list[str] = []
        start = bisect.bisect_left(self._keys, prefix)
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            rest = key[len(prefix) :]
            head, slash, _ = rest.partition("/")
            item = head + slash
            if not found or found[-1] != item:
                found.append(item)
        return found

    def _check_writable(self) -> None:
        if self.read_only:
            from ..framework.errors import ReadOnlyStorageError

            raise ReadOnlyStorageError("cannot write to readonly storage")


@dataclass
class Outcome:
    """What an HTTP caller would see: status, ``data`` and ``warnings`` (or ``errors``)."""

    status: int
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# What the host puts in place of the plugin's message for these error types (OpenBao's
# pb.ProtoErrToErr returns its own sentinel errors for them, dropping err_msg).
HOST_SENTINELS = {
    5: "unsupported operation",
    6: "unsupported path",
    7: "invalid request",
    8: "permission denied",
    9: "request needs further approval",
    10: "unrecoverable error",
}
_STATUS = {0: 500, 1: 500, 2: 500, 4: 400, 5: 405, 6: 404, 7: 400, 8: 403, 10: 500}
_WRAPPED = {0, *HOST_SENTINELS}
"""Types whose text reaches the caller inside a multierror ("1 error occurred: ...")."""
INTERNAL_ERROR = "internal error"


def _multierror(message: str) -> str:
    return f"1 error occurred:\n\t* {message}\n\n"


def error_outcome(err: pb.ProtoError) -> Outcome:
    """The HTTP result of a wire error, as OpenBao 2.7 answers it (measured: see
    plugin-protocol.md section 8 and tests/e2e/test_sdk_e2e.py)."""
    if err.err_type == 0 and err.err_msg == "permission denied":
        return Outcome(status=403, errors=[_multierror(err.err_msg)])
    status = int(err.err_code) if err.err_type == 3 else _STATUS.get(err.err_type, 500)
    message = HOST_SENTINELS.get(err.err_type, err.err_msg)
    return Outcome(
        status=status, errors=[_multierror(message) if err.err_type in _WRAPPED else message]
    )


def host_outcome(operation: str, reply: pb.HandleRequestReply) -> Outcome:
    """Map a wire reply to the HTTP result, following what OpenBao 2.7 was measured to do."""
    if reply.HasField("err") and (reply.err.err_type or reply.err.err_msg):
        return error_outcome(reply.err)
    if not reply.HasField("response"):
        return Outcome(status=404 if operation in ("read", "list") else 204)
    data = json.loads(reply.response.data)
    if "http_status_code" in data:
        body = json.loads(data["http_raw_body"])
        return Outcome(
            status=int(data["http_status_code"]),
            data=body.get("data") or {},
            warnings=list(body.get("warnings") or []),
            errors=list(body.get("errors") or []),
        )
    if set(data) - {"data"} == {"error"}:
        return Outcome(status=400, errors=[data["error"]])
    if operation == "list" and not data.get("keys"):
        return Outcome(status=404)
    return Outcome(status=200, data=data, warnings=list(reply.response.warnings))


def existence_outcome(reply: pb.HandleExistenceCheckReply) -> Outcome | str:
    """What the host makes of an existence check: the operation to send (``"create"`` or
    ``"update"``), or the error the caller gets. As OpenBao's request handling does: an
    unsupported path means "no check" (update); a user error is returned as is; any other
    error becomes a 500 ``internal error``."""
    if reply.HasField("err") and (reply.err.err_type or reply.err.err_msg):
        if reply.err.err_type == 6:
            return "update"
        if reply.err.err_type == 1:
            return error_outcome(reply.err)
        return Outcome(status=500, errors=[INTERNAL_ERROR])
    return "create" if reply.check_found and not reply.exists else "update"


class Driver(Protocol):
    """Sends one wire request to a backend and returns the wire reply."""

    storage: InMemoryStorage

    async def request(self, message: pb.Request) -> pb.HandleRequestReply: ...

    async def existence(self, message: pb.Request) -> pb.HandleExistenceCheckReply: ...


class DirectDriver:
    """Calls the backend in this process, through the same codec as the plugin server."""

    def __init__(self, backend: Backend, storage: InMemoryStorage) -> None:
        self.backend = backend
        self.storage = storage

    async def request(self, message: pb.Request) -> pb.HandleRequestReply:
        from ..plugin.codec import decode_request

        try:
            request = decode_request(message, self.storage)
            return encode_response(await self.backend.handle_request(request))
        except Exception as exc:
            return pb.HandleRequestReply(err=encode_error(exc))

    async def existence(self, message: pb.Request) -> pb.HandleExistenceCheckReply:
        from ..plugin.codec import decode_request

        try:
            request = decode_request(message, self.storage)
        except BadRequest:
            return pb.HandleExistenceCheckReply()  # as the plugin server does
        try:
            found, exists = await self.backend.handle_existence_check(request)
        except Exception as exc:
            return pb.HandleExistenceCheckReply(err=encode_error(exc))
        return pb.HandleExistenceCheckReply(check_found=found, exists=exists)


class StorageServer(backend_grpc.StorageBase):
    """The host's side of ``pb.Storage``, backed by an :class:`InMemoryStorage`."""

    def __init__(self, storage: InMemoryStorage) -> None:
        self.storage = storage

    async def Get(self, stream: Stream[pb.StorageGetArgs, pb.StorageGetReply]) -> None:  # noqa: N802
        args = await stream.recv_message()
        assert args is not None
        entry = await self.storage.get(args.key)
        if entry is None:
            await stream.send_message(pb.StorageGetReply())
            return
        wire = pb.StorageEntry(key=entry.key, value=entry.value, seal_wrap=entry.seal_wrap)
        await stream.send_message(pb.StorageGetReply(entry=wire))

    async def Put(self, stream: Stream[pb.StoragePutArgs, pb.StoragePutReply]) -> None:  # noqa: N802
        args = await stream.recv_message()
        assert args is not None
        try:
            await self.storage.put(
                StorageEntry(args.entry.key, args.entry.value, args.entry.seal_wrap)
            )
        except StorageError as exc:
            await stream.send_message(pb.StoragePutReply(err=str(exc)))
            return
        await stream.send_message(pb.StoragePutReply())

    async def Delete(  # noqa: N802
        self, stream: Stream[pb.StorageDeleteArgs, pb.StorageDeleteReply]
    ) -> None:
        args = await stream.recv_message()
        assert args is not None
        try:
            await self.storage.delete(args.key)
        except StorageError as exc:
            await stream.send_message(pb.StorageDeleteReply(err=str(exc)))
            return
        await stream.send_message(pb.StorageDeleteReply())

    async def List(self, stream: Stream[pb.StorageListArgs, pb.StorageListReply]) -> None:  # noqa: N802
        args = await stream.recv_message()
        assert args is not None
        await stream.send_message(pb.StorageListReply(keys=await self.storage.list(args.prefix)))


class SystemViewServer(backend_grpc.SystemViewBase):
    """The host's side of ``pb.SystemView``, answering from a :class:`StaticSystemView`."""

    def __init__(self, view: StaticSystemView) -> None:
        self.view = view

    async def DefaultLeaseTTL(self, stream: Stream[pb.Empty, pb.TTLReply]) -> None:  # noqa: N802
        await stream.recv_message()
        await stream.send_message(pb.TTLReply(TTL=self.view.default_ttl * 1_000_000_000))

    async def MaxLeaseTTL(self, stream: Stream[pb.Empty, pb.TTLReply]) -> None:  # noqa: N802
        await stream.recv_message()
        await stream.send_message(pb.TTLReply(TTL=self.view.max_ttl * 1_000_000_000))

    async def ReplicationState(  # noqa: N802
        self, stream: Stream[pb.Empty, pb.ReplicationStateReply]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(pb.ReplicationStateReply())

    async def LocalMount(self, stream: Stream[pb.Empty, pb.LocalMountReply]) -> None:  # noqa: N802
        await stream.recv_message()
        await stream.send_message(pb.LocalMountReply())

    async def EntityInfo(  # noqa: N802
        self, stream: Stream[pb.EntityInfoArgs, pb.EntityInfoReply]
    ) -> None:
        from ..plugin.pb import identity_pb2

        args = await stream.recv_message()
        assert args is not None
        entity = self.view.entities.get(args.entity_id)
        if entity is None:
            await stream.send_message(pb.EntityInfoReply())
            return
        wire = identity_pb2.Entity(
            ID=entity.id, name=entity.name, metadata=dict(entity.metadata), disabled=entity.disabled
        )
        for alias in entity.aliases:
            wire.aliases.add(
                mount_accessor=alias.mount_accessor,
                mount_type=alias.mount_type,
                name=alias.name,
                metadata=dict(alias.metadata),
            )
        await stream.send_message(pb.EntityInfoReply(entity=wire))

    async def GroupsForEntity(  # noqa: N802
        self, stream: Stream[pb.EntityInfoArgs, pb.GroupsForEntityReply]
    ) -> None:
        from ..plugin.pb import identity_pb2

        args = await stream.recv_message()
        assert args is not None
        groups = [
            identity_pb2.Group(ID=g.id, name=g.name, metadata=dict(g.metadata))
            for g in self.view.groups.get(args.entity_id, [])
        ]
        await stream.send_message(pb.GroupsForEntityReply(groups=groups))

    async def PluginEnv(self, stream: Stream[pb.Empty, pb.PluginEnvReply]) -> None:  # noqa: N802
        from ..plugin.pb import environment_pb2

        await stream.recv_message()
        env = environment_pb2.PluginEnvironment(vault_version=self.view.version)
        await stream.send_message(pb.PluginEnvReply(plugin_environment=env))


@contextlib.asynccontextmanager
async def serve_host_services(services: list[Servable]) -> AsyncIterator[str]:
    """Serve ``services`` (say :class:`StorageServer`) as the host's broker would, on a unix
    socket in a temporary directory (no TLS); yields the socket's path."""
    server = Server(services)
    with tempfile.TemporaryDirectory(prefix="plugin-host-") as socket_dir:
        path = os.path.join(socket_dir, "host.sock")
        await server.start(path=path)
        try:
            yield path
        finally:
            server.close()
            await server.wait_closed()


class _LoopbackBroker(Broker):
    """A broker whose every connection is the test's host services socket."""

    def __init__(self, host_socket: str) -> None:
        super().__init__(None)
        self._host_socket = host_socket

    async def dial(self, service_id: int) -> BrokerChannel:
        return BrokerChannel("unix", self._host_socket, None)


class GrpcDriver:
    """Drives a backend through the plugin's real ``pb.Backend`` service, in-process."""

    MOUNT_ID = "testmount0"

    def __init__(self, stub: backend_grpc.BackendStub, storage: InMemoryStorage) -> None:
        self._stub = stub
        self.storage = storage
        self._metadata = {MULTIPLEX_ID_KEY: self.MOUNT_ID}

    async def setup(self, config: dict[str, str] | None = None) -> pb.SetupReply:
        """Call Setup (then Initialize) as the host does when a mount is enabled."""
        reply = await self._stub.Setup(
            pb.SetupArgs(broker_id=1, Config=config or {}), metadata=self._metadata
        )
        if not reply.err:
            await self._stub.Initialize(pb.InitializeArgs(), metadata=self._metadata)
        return reply

    async def request(self, message: pb.Request) -> pb.HandleRequestReply:
        resolve = pb.Request()
        resolve.CopyFrom(message)
        resolve.operation = "resolve-path"
        await self._stub.HandleRequest(
            pb.HandleRequestArgs(request=resolve), metadata=self._metadata
        )
        return await self._stub.HandleRequest(
            pb.HandleRequestArgs(request=message), metadata=self._metadata
        )

    async def existence(self, message: pb.Request) -> pb.HandleExistenceCheckReply:
        return await self._stub.HandleExistenceCheck(
            pb.HandleExistenceCheckArgs(request=message), metadata=self._metadata
        )

    async def invalidate(self, key: str) -> None:
        """Deliver a host InvalidateKey."""
        await self._stub.InvalidateKey(pb.InvalidateKeyArgs(key=key), metadata=self._metadata)

    async def cleanup(self) -> None:
        """Deliver a host Cleanup."""
        await self._stub.Cleanup(pb.Empty(), metadata=self._metadata)


@contextlib.asynccontextmanager
async def open_driver(
    kind: str,
    factory: BackendFactory,
    *,
    system_view: StaticSystemView | None = None,
    config: dict[str, str] | None = None,
) -> AsyncIterator[DirectDriver | GrpcDriver]:
    """A ``"direct"`` or ``"grpc"`` driver for a fresh backend over fresh storage."""
    storage = InMemoryStorage()
    view = system_view or StaticSystemView()
    if kind == "direct":
        view_for_backend: SystemView = view
        backend = await factory(
            BackendConfig(storage=storage, system_view=view_for_backend, config=config or {})
        )
        await backend.initialize()
        try:
            yield DirectDriver(backend, storage)
        finally:
            await backend.cleanup()
        return
    if kind != "grpc":
        raise ValueError(f"unknown driver kind {kind!r}")
    host_services: list[Servable] = [StorageServer(storage), SystemViewServer(view)]
    async with serve_host_services(host_services) as host_socket:
        service = BackendService(factory, _LoopbackBroker(host_socket))
        # The plugin side runs on the transport plugin processes use, over a unix socket.
        server = GrpcServer([service])
        with tempfile.TemporaryDirectory(prefix="plugin-driver-") as socket_dir:
            socket_path = os.path.join(socket_dir, "plugin.sock")
            await server.start(path=socket_path)
            plugin_channel = Channel(path=socket_path)
            try:
                driver = GrpcDriver(backend_grpc.BackendStub(plugin_channel), storage)
                reply = await driver.setup(config)
                if reply.err:
                    raise RuntimeError(reply.err)
                try:
                    yield driver
                finally:
                    await driver.cleanup()
            finally:
                plugin_channel.close()
                server.close()
                await server.wait_closed()


class PluginTestClient:
    """Vault-CLI-like calls (read, write, list, delete, help) that return an :class:`Outcome`.

    Writes run the existence check first and become ``create`` or ``update`` as on a host.
    """

    def __init__(self, driver: DirectDriver | GrpcDriver, *, mount_point: str = "test/") -> None:
        self.driver = driver
        self.mount_point = mount_point

    @property
    def storage(self) -> InMemoryStorage:
        """The backend's storage."""
        return self.driver.storage

    def _message(
        self, operation: str, path: str, data: dict[str, Any] | None, **extra: Any
    ) -> pb.Request:
        message = pb.Request(
            operation=operation,
            path=path,
            data=json.dumps(data) if data is not None else "null",
            mount_point=self.mount_point,
            mount_type="test",
            mount_accessor="test_0000",
            id="req-1",
            **extra,
        )
        message.connection.remote_addr = "127.0.0.1"
        return message

    async def call(
        self, operation: str, path: str, data: dict[str, Any] | None = None, **extra: Any
    ) -> Outcome:
        """Send one operation as is."""
        reply = await self.driver.request(self._message(operation, path, data, **extra))
        return host_outcome(operation, reply)

    async def read(self, path: str, params: dict[str, Any] | None = None, **extra: Any) -> Outcome:
        """A GET; ``params`` play the query string."""
        return await self.call("read", path, params, **extra)

    async def write(self, path: str, data: dict[str, Any] | None = None, **extra: Any) -> Outcome:
        """A POST/PUT: existence check, then ``create`` or ``update``."""
        message = self._message("update", path, data or {}, **extra)
        decided = existence_outcome(await self.driver.existence(message))
        if isinstance(decided, Outcome):
            return decided
        return await self.call(decided, path, data or {}, **extra)

    async def list(self, path: str) -> Outcome:
        """A LIST."""
        return await self.call("list", path)

    async def delete(self, path: str) -> Outcome:
        """A DELETE."""
        return await self.call("delete", path)

    async def help(self, path: str = "") -> str:
        """The ``path-help`` text."""
        outcome = await self.call("help", path)
        text: str = outcome.data["help"]
        return text
