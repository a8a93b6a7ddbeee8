"""The gRPC services the host calls, one backend instance per mount (``multiplex_id``).

Each service lists its methods itself (``__mapping__``, the interface of grpclib's generated
``*Base`` classes) instead of subclassing the generated ``*_grpc`` modules: those import
``grpclib.client`` and with it h2, about a fifth of the imports before the handshake, and
the plugin needs neither (it calls the host's broker servers with ``broker_channel``).
``tests/sdk/plugin/test_services_mapping.py`` checks that the lists match the generated ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf import empty_pb2
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1 import health_pb2

if TYPE_CHECKING:
    from grpclib.server import Stream

    from .broker_channel import BrokerChannel

from ..framework.backend import Backend, BackendConfig, BackendFactory
from ..framework.errors import BadRequest, ReadOnlyStorageError
from .broker import Broker
from .codec import (
    ERR_INTERNAL,
    ERR_UNSUPPORTED_OPERATION,
    decode_request,
    encode_error,
    encode_response,
)
from .host import GrpcStorage, GrpcSystemView
from .pb import (
    backend_pb2 as pb,
)
from .pb import (
    goplugin_pb2,
    multiplexing_pb2,
    version_pb2,
)

log = logging.getLogger("sdk.plugin")

MULTIPLEX_ID_KEY = "multiplex_id"

# Built once: OpenBao 2.7 sends resolve-path before every request, and answering
# "unsupported operation" makes it go ahead unchanged.
_RESOLVE_PATH_REPLY = pb.HandleRequestReply(
    err=pb.ProtoError(err_type=ERR_UNSUPPORTED_OPERATION, err_msg="unsupported operation")
)
_RESOLVE_PATH_BYTES = _RESOLVE_PATH_REPLY.SerializeToString()
_NOT_SET_UP = pb.ProtoError(err_type=ERR_INTERNAL, err_msg="backend is not set up")


def _unary(method: Callable[[Any], Any], request: type, reply: type) -> Handler:
    return Handler(method, Cardinality.UNARY_UNARY, request, reply)


# A NamedTuple, not a dataclass: a dataclass compiles its methods when it is defined, 0.3 ms
# (0.6 ms when frozen) of every start (issue 12).
class MountInstance(NamedTuple):
    """One mount's backend and the broker channel its storage and system view use."""

    backend: Backend
    channel: BrokerChannel | None


def _mount_key(stream: Stream[object, object]) -> str:
    value = stream.metadata.get(MULTIPLEX_ID_KEY, "") if stream.metadata else ""
    return value if isinstance(value, str) else ""


class BackendService:
    """``pb.Backend``: Setup creates a mount's backend, requests are routed to it."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/pb.Backend/HandleRequest": _unary(
                self.HandleRequest, pb.HandleRequestArgs, pb.HandleRequestReply
            ),
            "/pb.Backend/SpecialPaths": _unary(self.SpecialPaths, pb.Empty, pb.SpecialPathsReply),
            "/pb.Backend/HandleExistenceCheck": _unary(
                self.HandleExistenceCheck, pb.HandleExistenceCheckArgs, pb.HandleExistenceCheckReply
            ),
            "/pb.Backend/Cleanup": _unary(self.Cleanup, pb.Empty, pb.Empty),
            "/pb.Backend/InvalidateKey": _unary(self.InvalidateKey, pb.InvalidateKeyArgs, pb.Empty),
            "/pb.Backend/Setup": _unary(self.Setup, pb.SetupArgs, pb.SetupReply),
            "/pb.Backend/Initialize": _unary(
                self.Initialize, pb.InitializeArgs, pb.InitializeReply
            ),
            "/pb.Backend/Type": _unary(self.Type, pb.Empty, pb.TypeReply),
        }

    def __init__(self, factory: BackendFactory, broker: Broker) -> None:
        self._factory = factory
        self._broker = broker
        self.mounts: dict[str, MountInstance] = {}

    def __fast_unary__(self) -> dict[str, Callable[[Any], bytes | None]]:
        """Answers the plugin's own transport gives without starting a handler task."""
        return {"/pb.Backend/HandleRequest": self._resolve_path}

    @staticmethod
    def _resolve_path(args: pb.HandleRequestArgs) -> bytes | None:
        return _RESOLVE_PATH_BYTES if args.request.operation == "resolve-path" else None

    def _mount(self, stream: Stream[object, object]) -> MountInstance | None:
        return self.mounts.get(_mount_key(stream))

    async def Setup(self, stream: Stream[pb.SetupArgs, pb.SetupReply]) -> None:  # noqa: N802
        args = await stream.recv_message()
        assert args is not None
        key = _mount_key(stream)  # type: ignore[arg-type]
        previous = self.mounts.pop(key, None)
        if previous is not None:
            await self._close(previous)
        try:
            channel = await self._broker.dial(args.broker_id)
            config = BackendConfig(
                storage=GrpcStorage(channel),
                system_view=GrpcSystemView(channel),
                logger=logging.getLogger(f"backend.{key or 'default'}"),
                config=dict(args.Config),
                backend_uuid=args.backendUUID,
            )
            backend = await self._factory(config)
        except Exception as exc:
            log.error("backend setup failed", exc_info=True)
            await stream.send_message(pb.SetupReply(err=f"setup failed: {exc}"))
            return
        self.mounts[key] = MountInstance(backend, channel)
        log.debug("backend set up", extra={"multiplex_id": key})
        await stream.send_message(pb.SetupReply())

    async def Initialize(  # noqa: N802
        self, stream: Stream[pb.InitializeArgs, pb.InitializeReply]
    ) -> None:
        await stream.recv_message()
        mount = self._mount(stream)  # type: ignore[arg-type]
        if mount is None:
            await stream.send_message(pb.InitializeReply(err=_NOT_SET_UP))
            return
        try:
            await mount.backend.initialize()
        except ReadOnlyStorageError:
            # A Raft restart sets mounts up as standby first; the active setup follows.
            log.info("initialize skipped: storage is read-only")
        except Exception as exc:
            log.error("initialize failed", exc_info=True)
            await stream.send_message(pb.InitializeReply(err=encode_error(exc)))
            return
        await stream.send_message(pb.InitializeReply())

    async def HandleRequest(  # noqa: N802
        self, stream: Stream[pb.HandleRequestArgs, pb.HandleRequestReply]
    ) -> None:
        args = await stream.recv_message()
        assert args is not None
        message = args.request
        if message.operation == "resolve-path":
            await stream.send_message(_RESOLVE_PATH_REPLY)
            return
        mount = self._mount(stream)  # type: ignore[arg-type]
        if mount is None:
            await stream.send_message(pb.HandleRequestReply(err=_NOT_SET_UP))
            return
        try:
            request = decode_request(message, mount.backend.storage)
            reply = encode_response(await mount.backend.handle_request(request))
        except Exception as exc:
            reply = pb.HandleRequestReply(err=encode_error(exc))
            if reply.err.err_type == ERR_INTERNAL:
                log.error(
                    "request failed",
                    exc_info=True,
                    extra={"path": message.path, "operation": message.operation},
                )
        await stream.send_message(reply)

    async def HandleExistenceCheck(  # noqa: N802
        self, stream: Stream[pb.HandleExistenceCheckArgs, pb.HandleExistenceCheckReply]
    ) -> None:
        args = await stream.recv_message()
        assert args is not None
        mount = self._mount(stream)  # type: ignore[arg-type]
        if mount is None:
            await stream.send_message(pb.HandleExistenceCheckReply(err=_NOT_SET_UP))
            return
        try:
            try:
                request = decode_request(args.request, mount.backend.storage)
            except BadRequest:
                # Undecodable data: let the operation itself answer 400, naming the field
                # (an error here would reach the caller as a 500).
                await stream.send_message(pb.HandleExistenceCheckReply())
                return
            found, exists = await mount.backend.handle_existence_check(request)
            reply = pb.HandleExistenceCheckReply(check_found=found, exists=exists)
        except Exception as exc:
            log.error("existence check failed", exc_info=True)
            reply = pb.HandleExistenceCheckReply(err=encode_error(exc))
        await stream.send_message(reply)

    async def SpecialPaths(  # noqa: N802
        self, stream: Stream[pb.Empty, pb.SpecialPathsReply]
    ) -> None:
        await stream.recv_message()
        mount = self._mount(stream)  # type: ignore[arg-type]
        paths = pb.Paths()
        if mount is not None:
            special = mount.backend.special_paths
            paths.root.extend(special.root)
            paths.unauthenticated.extend(special.unauthenticated)
            paths.local_storage.extend(special.local_storage)
            paths.seal_wrap_storage.extend(special.seal_wrap_storage)
        await stream.send_message(pb.SpecialPathsReply(paths=paths))

    async def Type(self, stream: Stream[pb.Empty, pb.TypeReply]) -> None:  # noqa: N802
        await stream.recv_message()
        mount = self._mount(stream)  # type: ignore[arg-type]
        backend_type = int(mount.backend.backend_type) if mount is not None else 1
        await stream.send_message(pb.TypeReply(type=backend_type))

    async def InvalidateKey(  # noqa: N802
        self, stream: Stream[pb.InvalidateKeyArgs, pb.Empty]
    ) -> None:
        args = await stream.recv_message()
        assert args is not None
        mount = self._mount(stream)  # type: ignore[arg-type]
        if mount is not None:
            try:
                await mount.backend.invalidate(args.key)
            except Exception:
                log.error("invalidate failed", exc_info=True, extra={"key": args.key})
        await stream.send_message(pb.Empty())

    async def Cleanup(self, stream: Stream[pb.Empty, pb.Empty]) -> None:  # noqa: N802
        await stream.recv_message()
        mount = self.mounts.pop(_mount_key(stream), None)  # type: ignore[arg-type]
        if mount is not None:
            await self._close(mount)
        await stream.send_message(pb.Empty())

    async def close_all(self) -> None:
        """Clean up every mount (process shutdown)."""
        while self.mounts:
            _, mount = self.mounts.popitem()
            await self._close(mount)

    @staticmethod
    async def _close(mount: MountInstance) -> None:
        try:
            await mount.backend.cleanup()
        except Exception:
            log.error("backend cleanup failed", exc_info=True)
        if mount.channel is not None:
            mount.channel.close()


class MultiplexingService:
    """Tells the host whether one process may serve every mount of the catalog entry."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/pluginutil.multiplexing.PluginMultiplexing/MultiplexingSupport": _unary(
                self.MultiplexingSupport,
                multiplexing_pb2.MultiplexingSupportRequest,
                multiplexing_pb2.MultiplexingSupportResponse,
            )
        }

    def __init__(self, supported: bool) -> None:
        self._supported = supported

    async def MultiplexingSupport(  # noqa: N802
        self,
        stream: Stream[
            multiplexing_pb2.MultiplexingSupportRequest,
            multiplexing_pb2.MultiplexingSupportResponse,
        ],
    ) -> None:
        await stream.recv_message()
        await stream.send_message(
            multiplexing_pb2.MultiplexingSupportResponse(supported=self._supported)
        )


class VersionService:
    """Reports the plugin's semantic version (used at registration and mount)."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/logical.PluginVersion/Version": _unary(
                self.Version, version_pb2.Empty, version_pb2.VersionReply
            )
        }

    def __init__(self, version: str) -> None:
        self._version = version

    async def Version(  # noqa: N802
        self, stream: Stream[version_pb2.Empty, version_pb2.VersionReply]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(version_pb2.VersionReply(plugin_version=self._version))


class ControllerService:
    """``Shutdown``: answer, then let the process stop (the host kills it after 2 s)."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/plugin.GRPCController/Shutdown": _unary(
                self.Shutdown, goplugin_pb2.Empty, goplugin_pb2.Empty
            )
        }

    def __init__(self, on_shutdown: Callable[[], None]) -> None:
        self._on_shutdown = on_shutdown

    async def Shutdown(  # noqa: N802
        self, stream: Stream[goplugin_pb2.Empty, goplugin_pb2.Empty]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(goplugin_pb2.Empty())
        # Give the reply a moment to leave before the server closes.
        asyncio.get_running_loop().call_later(0.05, self._on_shutdown)


class StdioService:
    """Stdio forwarding: our logs already go to stderr, so the stream stays silent."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/plugin.GRPCStdio/StreamStdio": Handler(
                self.StreamStdio,
                Cardinality.UNARY_STREAM,
                empty_pb2.Empty,
                goplugin_pb2.StdioData,
            )
        }

    async def StreamStdio(  # noqa: N802
        self, stream: Stream[empty_pb2.Empty, goplugin_pb2.StdioData]
    ) -> None:
        await stream.recv_message()
        await stream.send_initial_metadata()
        await asyncio.Event().wait()  # open until the host hangs up


class HealthService:
    """``grpc.health.v1``: go-plugin asks for the service named ``plugin``."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/grpc.health.v1.Health/Check": _unary(
                self.Check, health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
            ),
            "/grpc.health.v1.Health/Watch": Handler(
                self.Watch,
                Cardinality.UNARY_STREAM,
                health_pb2.HealthCheckRequest,
                health_pb2.HealthCheckResponse,
            ),
        }

    SERVICES = frozenset({"", "plugin"})

    async def Check(  # noqa: N802
        self, stream: Stream[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        if request.service not in self.SERVICES:
            raise GRPCError(Status.NOT_FOUND, f"unknown service {request.service!r}")
        await stream.send_message(
            health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        )

    async def Watch(  # noqa: N802
        self, stream: Stream[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    ) -> None:
        await self.Check(stream)
        await asyncio.Event().wait()  # the status never changes while the process lives
