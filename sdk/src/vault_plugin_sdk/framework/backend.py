"""A backend: the paths of one mount, routing, existence checks, help and lifecycle hooks."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ._records import FACTORY, dataclass_methods, set_field
from .errors import BadRequest, FieldError, LogicalError, UnsupportedOperation, UnsupportedPath
from .help import backend_help, path_help
from .openapi import openapi_document
from .path import Path
from .request import FieldData, Operation, Request
from .response import Response
from .storage import Storage
from .system_view import StaticSystemView, SystemView


class BackendType(enum.IntEnum):
    """What the host mounts the backend as."""

    UNKNOWN = 0
    LOGICAL = 1  # a secrets engine
    CREDENTIAL = 2  # an auth method


@dataclass_methods
@dataclass(frozen=True, init=False, repr=False, eq=False)
class SpecialPaths:
    """Paths the host treats specially. Entries are path prefixes, or globs ending in ``*``.

    ``seal_wrap_storage`` keys are seal-wrapped by Vault Enterprise (OpenBao and Vault CE
    have no seal wrapping and encrypt them with the barrier like every entry);
    ``local_storage`` keys are not replicated; ``root`` paths need a root/sudo token;
    ``unauthenticated`` paths need no token.
    """

    root: tuple[str, ...] = ()
    unauthenticated: tuple[str, ...] = ()
    local_storage: tuple[str, ...] = ()
    seal_wrap_storage: tuple[str, ...] = ()

    def __init__(
        self,
        root: tuple[str, ...] = (),
        unauthenticated: tuple[str, ...] = (),
        local_storage: tuple[str, ...] = (),
        seal_wrap_storage: tuple[str, ...] = (),
    ) -> None:
        # Written out rather than generated: see _records.
        set_field(self, "root", root)
        set_field(self, "unauthenticated", unauthenticated)
        set_field(self, "local_storage", local_storage)
        set_field(self, "seal_wrap_storage", seal_wrap_storage)


def _backend_logger() -> logging.Logger:
    """The logger a backend gets when its host or caller gives none."""
    return logging.getLogger("backend")


@dataclass_methods
@dataclass(init=False, repr=False, eq=False)
class BackendConfig:
    """What the host hands a new backend instance (one per mount)."""

    storage: Storage
    system_view: SystemView = field(default_factory=StaticSystemView)
    logger: logging.Logger = field(default_factory=_backend_logger)
    config: Mapping[str, str] = field(default_factory=dict)
    backend_uuid: str = ""

    def __init__(
        self,
        storage: Storage,
        system_view: SystemView = FACTORY,
        logger: logging.Logger = FACTORY,
        config: Mapping[str, str] = FACTORY,
        backend_uuid: str = "",
    ) -> None:
        # Written out rather than generated: see _records.
        self.storage = storage
        self.system_view = StaticSystemView() if system_view is FACTORY else system_view
        self.logger = _backend_logger() if logger is FACTORY else logger
        self.config = {} if config is FACTORY else config
        self.backend_uuid = backend_uuid


InitializeHook = Callable[[Storage], Awaitable[None]]
InvalidateHook = Callable[[str], Awaitable[None]]
CleanupHook = Callable[[], Awaitable[None]]


class Backend:
    """The paths of one mount, routed by pattern, with their help and lifecycle hooks.

    Hooks: ``initialize`` runs once the mount is set up (it must tolerate read-only
    storage, since a Raft standby sets mounts up that way first), ``invalidate`` runs when
    the host reports a storage key changed elsewhere (e.g. on another cluster node), and
    ``cleanup`` runs when the mount is torn down (it may run more than once).
    """

    def __init__(
        self,
        *,
        paths: Sequence[Path],
        help: str,
        storage: Storage,
        special_paths: SpecialPaths | None = None,
        backend_type: BackendType = BackendType.LOGICAL,
        initialize: InitializeHook | None = None,
        invalidate: InvalidateHook | None = None,
        cleanup: CleanupHook | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.paths = list(paths)
        self.help = help
        self.storage = storage
        self.special_paths = special_paths or SpecialPaths()
        self.backend_type = backend_type
        self.logger = logger or _backend_logger()
        self._initialize = initialize
        self._invalidate = invalidate
        self._cleanup = cleanup
        self._cleaned_up = False

    # -- routing ---------------------------------------------------------------------------

    def route(self, relative_path: str) -> tuple[Path, dict[str, str]] | None:
        """The first path whose pattern matches, with its named parts."""
        for path in self.paths:
            match = path.regex.match(relative_path)
            if match is not None:
                groups = {k: v for k, v in match.groupdict().items() if v is not None}
                return path, groups
        return None

    async def handle_request(self, request: Request) -> Response | None:
        """Serve one request. Fixable problems come back as error responses; other failures
        raise :class:`LogicalError` (exact status) or any exception (reported as 500)."""
        try:
            return await self._handle(request)
        except BadRequest as exc:
            return Response.error(exc.message)

    async def _handle(self, request: Request) -> Response | None:
        if request.operation == Operation.RESOLVE_PATH:
            raise UnsupportedOperation()
        if request.operation == Operation.HELP:
            return self._help(request.path)
        routed = self.route(request.path)
        if routed is None:
            if request.operation == Operation.ROLLBACK:
                return None
            raise UnsupportedPath(f"unsupported path: {request.path!r}")
        path, groups = routed
        request.match = groups
        operation = _as_operation(request.operation)
        handler = path.operations.get(operation) if operation is not None else None
        if handler is None:
            raise UnsupportedOperation(
                f"unsupported operation {request.operation!r} on {request.path!r}"
            )
        data = FieldData(path.fields, request.data, groups)
        if data.unknown and path.reject_unknown_fields:
            raise FieldError(data.unknown[0], unknown_field_problem(data.unknown[0], path))
        response = await handler.callback(request, data)
        if data.unknown and response is not None and not response.is_error:
            response.add_warning(f"Endpoint ignored these unrecognized parameters: {data.unknown}")
        return response

    async def handle_existence_check(self, request: Request) -> tuple[bool, bool]:
        """``(check_found, exists)`` for a write: whether the path has an existence check
        and, if so, whether the object already exists."""
        routed = self.route(request.path)
        if routed is None:
            return False, False
        path, groups = routed
        if path.existence_check is None:
            return False, False
        request.match = groups
        try:
            try:
                data = FieldData(path.fields, request.data, groups)
            except FieldError:
                # A bad value is reported by the operation itself, with its field name.
                data = FieldData(path.fields, {}, groups)
            return True, await path.existence_check(request, data)
        except FieldError:
            # A bad path value (e.g. a name over its length limit): "no check", so the
            # host sends the write as an update and the operation answers 400 naming the
            # field. An error here would reach the caller as a 500 "internal error".
            return False, False

    def _help(self, relative_path: str) -> Response:
        routed = self.route(relative_path) if relative_path else None
        text = path_help(routed[0]) if routed else backend_help(self.help, self.paths)
        # The host reads `openapi` from the mount root's help for sys/internal/specs/openapi;
        # a path's help carries that path's part, as Vault's framework does.
        described = [routed[0]] if routed else self.paths
        tag = "auth" if self.backend_type == BackendType.CREDENTIAL else "secrets"
        openapi = openapi_document(described, title=_first_line(self.help), tag=tag)
        return Response(data={"help": text, "see_also": [], "openapi": openapi})

    # -- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Run the initialize hook, if any."""
        if self._initialize is not None:
            await self._initialize(self.storage)

    async def invalidate(self, key: str) -> None:
        """Run the invalidate hook, if any."""
        if self._invalidate is not None:
            await self._invalidate(key)

    async def cleanup(self) -> None:
        """Run the cleanup hook once; later calls do nothing (the host may call twice)."""
        if self._cleaned_up:
            return
        self._cleaned_up = True
        if self._cleanup is not None:
            await self._cleanup()


def unknown_field_problem(name: str, path: Path) -> str:
    """The 400 text for a field ``path`` does not declare, naming the closest field it does
    (a typo such as ``role_id`` for ``role_ids``); fields taken from the URL are not offered."""
    import difflib  # only on this error path: not among the imports of every start

    known = [f for f in path.fields if f not in path.regex.groupindex]
    close = difflib.get_close_matches(name[:100], known, n=1, cutoff=0.6)
    if close:
        return f"unknown field for this path; did you mean '{close[0]}'?"
    if known:
        return f"unknown field for this path; it takes: {', '.join(sorted(known))}"
    return "unknown field for this path; it takes no fields"


_OPERATIONS = {operation.value: operation for operation in Operation}


def _as_operation(value: str) -> Operation | None:
    # A dictionary, not Operation(value): this runs on every request.
    return _OPERATIONS.get(value)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    return lines[0] if lines else ""


BackendFactory = Callable[[BackendConfig], Awaitable[Backend]]
"""Builds the backend for one mount; the plugin server calls it once per ``Setup``."""


__all__ = [
    "Backend",
    "BackendConfig",
    "BackendFactory",
    "BackendType",
    "LogicalError",
    "SpecialPaths",
]
