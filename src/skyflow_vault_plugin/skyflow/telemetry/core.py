"""What the engine calls on every request, and telemetry switched off.

The engine wraps each path handler once, when its paths are built
(``telemetry.instrument(ROLE_READ, handler)``), wraps each Skyflow exchange
(``with telemetry.upstream_exchange(): ...``) and hands ``telemetry.on_attempt`` to its
:class:`~skyflow_vault_plugin.skyflow.client.TokenClient`. Handlers add what only they know
with :func:`note_cache`, :func:`note_ctx` and :func:`note_error`, which find the request's
:class:`OpScope` through a context variable and do nothing outside one.

:class:`Telemetry` itself is the disabled implementation: ``instrument`` returns the handler
unchanged (token requests keep a light wrapper for the audit log line), ``on_attempt`` is
``None`` and ``upstream_exchange`` returns a shared no-op context manager, so a request pays
for no attribute dictionaries, no spans and no metric points. It never imports OpenTelemetry;
:mod:`.otel` does, and is imported only when a signal is switched on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vault_plugin_sdk.framework import (
    BadRequest,
    FieldData,
    FieldError,
    LogicalError,
    PermissionDenied,
    Request,
    Response,
    StorageError,
)

from ..errors import (
    CredentialsError,
    InvalidContext,
    InvalidInput,
    SkyflowError,
    SkyflowRejected,
    SkyflowUnavailable,
    UpstreamError,
)
from .settings import APPLICATION_LABEL, TelemetrySettings

if TYPE_CHECKING:
    from ..client import AttemptHook

__all__ = [
    "AUDIT_LOGGER",
    "CONFIG_DELETE",
    "CONFIG_READ",
    "CONFIG_WRITE",
    "HEALTH_CHECK",
    "ROLE_DELETE",
    "ROLE_LIST",
    "ROLE_READ",
    "ROLE_WRITE",
    "TOKEN_GENERATE",
    "ApplicationLabels",
    "Handler",
    "Op",
    "OpScope",
    "Telemetry",
    "classify_error",
    "current_scope",
    "mount_name",
    "note_cache",
    "note_ctx",
    "note_error",
    "trace_id_from_traceparent",
]

Handler = Callable[[Request, FieldData], Awaitable[Response | None]]
"""A path operation's callback (the SDK's ``OperationCallback``)."""

AUDIT_LOGGER = "skyflow.audit"
UNKNOWN_ROLE = "_unknown"
"""The ``role`` metric label of a request for a role that does not exist (names are free text
there, and would make the label unbounded)."""

# -- names: span names as the Go plugin has them, so dashboards keep working ---------------

SPAN_TOKEN_GENERATE = "SkyflowPlugin.Token.Generate"
SPAN_SDK_AUTH = "SkyflowPlugin.SDK.Auth"
SPAN_CONFIG_WRITE = "SkyflowPlugin.Config.Write"
SPAN_CONFIG_READ = "SkyflowPlugin.Config.Read"
SPAN_CONFIG_DELETE = "SkyflowPlugin.Config.Delete"
SPAN_ROLE_WRITE = "SkyflowPlugin.Role.Write"
SPAN_ROLE_READ = "SkyflowPlugin.Role.Read"
SPAN_ROLE_LIST = "SkyflowPlugin.Role.List"
SPAN_ROLE_DELETE = "SkyflowPlugin.Role.Delete"
SPAN_HEALTH_CHECK = "SkyflowPlugin.Health.Check"

METRIC_TOKENS_ISSUED = "skyflow_total_tokens_generated"
METRIC_TOKENS_FAILED = "skyflow_total_tokens_failed"
METRIC_TOKEN_DURATION = "skyflow_token_generated_duration_ms"
METRIC_CACHE_LOOKUPS = "skyflow_token_cache_lookups_total"
METRIC_UPSTREAM_CALLS = "skyflow_sdk_call_total"
METRIC_UPSTREAM_DURATION = "skyflow_sdk_call_duration_ms"
METRIC_CONFIG_OPERATIONS = "skyflow_config_operations_total"
METRIC_ROLE_OPERATIONS = "skyflow_role_operations_total"
METRIC_HEALTH_CHECKS = "skyflow_health_checks_total"

ATTR_MOUNT = "skyflow.mount"
ATTR_MOUNT_PATH = "skyflow.mount_path"
ATTR_ROLE = "skyflow.role"
ATTR_OPERATION = "skyflow.operation"
ATTR_OUTCOME = "skyflow.outcome"
ATTR_ERROR_TYPE = "error.type"
ATTR_CACHE = "skyflow.cache"
ATTR_FOUND = "skyflow.found"
ATTR_APPLICATION = "skyflow.application"
ATTR_CTX_TYPE = "skyflow.ctx.type"
ATTR_CTX_KEYS = "skyflow.ctx.keys"
ATTR_UPSTREAM_STATUS = "skyflow.upstream.status"
ATTR_UPSTREAM_REQUEST_ID = "skyflow.upstream.request_id"
ATTR_UPSTREAM_ATTEMPTS = "skyflow.upstream.attempts"

SUCCESS = "success"
ERROR = "error"

_MAX_CTX_KEYS = 64
_MAX_LABEL_MEMO = 4096
_MAX_REQUEST_ID = 128
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_PRINTABLE = re.compile(r"[^\x21-\x7e]")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Op:
    """An instrumented operation: its span name and its family (which metrics it feeds)."""

    span_name: str
    family: str  # "token", "config", "role" or "health"


TOKEN_GENERATE = Op(SPAN_TOKEN_GENERATE, "token")
CONFIG_WRITE = Op(SPAN_CONFIG_WRITE, "config")
CONFIG_READ = Op(SPAN_CONFIG_READ, "config")
CONFIG_DELETE = Op(SPAN_CONFIG_DELETE, "config")
ROLE_WRITE = Op(SPAN_ROLE_WRITE, "role")
ROLE_READ = Op(SPAN_ROLE_READ, "role")
ROLE_LIST = Op(SPAN_ROLE_LIST, "role")
ROLE_DELETE = Op(SPAN_ROLE_DELETE, "role")
HEALTH_CHECK = Op(SPAN_HEALTH_CHECK, "health")


# -- labels ---------------------------------------------------------------------------------


def mount_name(mount_point: str) -> str:
    """The mount path without its slashes: ``skyflow/insurance`` for ``skyflow/insurance/``.

    The whole path, not its last segment: ``a/insurance`` and ``b/insurance`` are two
    tenants and must not share a label.
    """
    return mount_point.strip("/")


class ApplicationLabels:
    """Bounded labels for the client-supplied ``Application-Source`` header.

    With an allow-list, a value outside it becomes ``other``. Without one, the first
    ``max_values`` distinct values (lower-cased) are kept and later ones become ``other``.
    A missing header is ``none``; a value that is not a short identifier is ``other``.
    """

    NONE = "none"
    OTHER = "other"

    def __init__(self, allowlist: frozenset[str] | None, max_values: int) -> None:
        self._allowlist = allowlist
        self._max_values = max_values
        self._admitted: set[str] = set()
        self._memo: dict[str, str] = {}

    @property
    def admitted(self) -> frozenset[str]:
        """The values admitted under the cardinality cap so far."""
        return frozenset(self._admitted)

    def label(self, raw: str | None) -> str:
        """The label for one header value."""
        if raw is None:
            return self.NONE
        label = self._memo.get(raw)
        if label is not None:
            return label
        value = raw.strip().lower()
        if not value:
            label = self.NONE
        elif not APPLICATION_LABEL.fullmatch(value):
            label = self.OTHER
        elif self._allowlist is not None:
            label = value if value in self._allowlist else self.OTHER
        elif value in self._admitted:
            label = value
        elif len(self._admitted) < self._max_values:
            self._admitted.add(value)
            label = value
        else:
            label = self.OTHER
        if len(raw) <= 128 and len(self._memo) < _MAX_LABEL_MEMO:
            self._memo[raw] = label
        return label


def trace_id_from_traceparent(request: Request) -> str:
    """The trace ID of a valid W3C ``traceparent`` passed through to the plugin, else ``""``."""
    values = request.headers.get("traceparent")
    if not values:
        return ""
    match = _TRACEPARENT.fullmatch(values[0].strip().lower())
    if match is None or match.group(1) == "ff" or match.group(2) == "0" * 32:
        return ""
    return match.group(2)


def _request_id(value: str | None) -> str:
    if not value:
        return ""
    return _PRINTABLE.sub("", value)[:_MAX_REQUEST_ID]


def ctx_shape(ctx: object) -> tuple[str, tuple[str, ...]]:
    """``(type, sorted keys)`` of a ctx value; never the values themselves."""
    if ctx is None:
        return "none", ()
    if isinstance(ctx, Mapping):
        keys = tuple(sorted(str(key)[:64] for key in ctx))[:_MAX_CTX_KEYS]
        return ("map", keys) if keys else ("none", ())
    if isinstance(ctx, bool):
        return "bool", ()
    if isinstance(ctx, int | float):
        return "number", ()
    if isinstance(ctx, str):
        return ("string", ()) if ctx.strip() else ("none", ())
    return "other", ()


# -- errors ---------------------------------------------------------------------------------


def classify_error(exc: BaseException) -> str:
    """A bounded error type for an exception a handler raised.

    The engine's own error (kept as the ``__context__`` of the SDK error it was mapped to)
    decides when there is one; otherwise the SDK error's class or status.
    """
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    engine = _engine_error(exc)
    if engine is not None:
        return _engine_error_type(engine)
    if isinstance(exc, FieldError):
        return "invalid_input"
    if isinstance(exc, BadRequest):
        return "bad_request"
    if isinstance(exc, PermissionDenied):
        return "permission_denied"
    if isinstance(exc, LogicalError):
        return "not_found" if exc.status == 404 else f"http_{exc.status}"
    if isinstance(exc, StorageError):
        return "storage"
    return "internal"


def _engine_error(exc: BaseException) -> SkyflowError | None:
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, SkyflowError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _engine_error_type(error: SkyflowError) -> str:
    if isinstance(error, SkyflowRejected):
        return "skyflow_rejected"
    if isinstance(error, SkyflowUnavailable):
        if error.status == 429:
            return "skyflow_rate_limited"
        if error.status is None:
            return "skyflow_timeout" if _timed_out(error) else "skyflow_unreachable"
        return "skyflow_unavailable"
    if isinstance(error, UpstreamError):
        return "skyflow_error"
    if isinstance(error, InvalidContext):
        return "invalid_ctx"
    if isinstance(error, CredentialsError):
        return "invalid_credentials"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    return "skyflow_error"


def _timed_out(error: UpstreamError) -> bool:
    cause = error.__cause__
    if cause is None:
        return "deadline" in error.summary
    return isinstance(cause, TimeoutError) or type(cause).__name__.endswith("Timeout")


# -- one request ----------------------------------------------------------------------------


class OpScope:
    """What telemetry learns about one request while it runs. Plain slots, no dictionaries."""

    __slots__ = (
        "application",
        "attempts",
        "cache",
        "ctx",
        "error_type",
        "found",
        "mount",
        "noted_error",
        "op",
        "outcome",
        "request",
        "role",
        "span",
        "start_ns",
        "started",
        "upstream_request_id",
        "upstream_status",
    )

    def __init__(self, op: Op, request: Request, mount: str, application: str) -> None:
        self.op = op
        self.request = request
        self.mount = mount
        self.role: str = request.match.get("name", "")
        self.application = application
        self.started = time.perf_counter()
        self.outcome = SUCCESS
        self.error_type = ""
        self.noted_error = ""
        self.cache = ""
        self.ctx: object = None
        self.found: bool | None = None
        self.attempts = 0
        self.upstream_status: int | None = None
        self.upstream_request_id = ""
        self.span: Any = None
        self.start_ns = 0

    def settle(self, response: Response | None) -> None:
        """Record the outcome of a handler that returned."""
        if self.request.operation == "read" and self.op.family != "token":
            self.found = response is not None
        if response is None:
            return
        if response.status is not None and response.status >= 400:
            self.outcome = ERROR
            self.error_type = (
                "unhealthy" if self.op.family == "health" else f"http_{response.status}"
            )
        elif response.is_error:
            self.outcome = ERROR
            self.error_type = self.noted_error or "bad_request"

    def fail(self, exc: BaseException) -> None:
        """Record the outcome of a handler that raised."""
        self.outcome = ERROR
        self.error_type = self.noted_error or classify_error(exc)

    def note_upstream(self, status: int | None, request_id: str, attempts: int) -> None:
        """Record what a Skyflow exchange made of this request."""
        self.attempts += attempts
        if status is not None:
            self.upstream_status = status
        if request_id:
            self.upstream_request_id = request_id

    def duration_ms(self) -> float:
        """Milliseconds since the request started."""
        return (time.perf_counter() - self.started) * 1000.0


_current: ContextVar[OpScope | None] = ContextVar("skyflow_telemetry_scope", default=None)


def current_scope() -> OpScope | None:
    """The scope of the request being served in this context, if it is instrumented."""
    return _current.get()


def note_cache(result: str) -> None:
    """Where the token came from: ``hit``, ``miss``, ``coalesced``, ``stale`` or ``off``."""
    scope = _current.get()
    if scope is not None:
        scope.cache = result


def note_ctx(ctx: object) -> None:
    """The resolved ctx. Only its type and sorted map keys are ever reported."""
    scope = _current.get()
    if scope is not None:
        scope.ctx = ctx


def note_error(error_type: str) -> None:
    """An error type the handler knows better than the exception it is about to raise."""
    scope = _current.get()
    if scope is not None:
        scope.noted_error = error_type


class _NoExchange(AbstractContextManager[None]):
    """The shared context manager of a Skyflow exchange nobody observes."""

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_EXCHANGE = _NoExchange()


# -- the disabled implementation ------------------------------------------------------------


class Telemetry:
    """Telemetry switched off: no OpenTelemetry import, no exporter, no thread.

    Token requests still write the audit log line (unless ``SKYFLOW_AUDIT_LOG=false``): it is
    a log record for the host's log, not an export. :class:`.otel.OTelTelemetry` extends this
    class with spans and metrics.
    """

    enabled = False

    def __init__(self, settings: TelemetrySettings | None = None) -> None:
        self.settings = settings or TelemetrySettings()
        # One set of Application-Source slots per mount: a tenant sending many distinct
        # values must not use up the labels of every other mount of the process.
        self._applications: dict[str, ApplicationLabels] = {}
        self._overflow_applications = self._new_application_labels()
        self._audit = logging.getLogger(AUDIT_LOGGER) if self.settings.audit_log else None
        self._mounts: dict[str, str] = {}

    # -- what the engine calls -----------------------------------------------------------

    @property
    def on_attempt(self) -> AttemptHook | None:
        """The ``TokenClient`` hook reporting each HTTP attempt; None when nobody listens."""
        return None

    def upstream_exchange(self) -> AbstractContextManager[object]:
        """Wrap one Skyflow exchange (retries included): the ``SDK.Auth`` span."""
        return _NO_EXCHANGE

    def instrument(self, op: Op, handler: Handler) -> Handler:
        """``handler`` observed as ``op``; the handler itself when there is nothing to do."""
        if not self._observes(op):
            return handler
        begin, end = self._begin, self._end

        async def instrumented(req: Request, data: FieldData) -> Response | None:
            scope = begin(op, req)
            token = _current.set(scope)
            try:
                response = await handler(req, data)
            except BaseException as exc:
                scope.fail(exc)
                raise
            else:
                scope.settle(response)
                return response
            finally:
                _current.reset(token)
                end(scope)

        return instrumented

    async def flush(self) -> None:
        """Export what is pending (a mount's Cleanup). Never blocks the event loop."""

    def shutdown(self) -> None:
        """Flush and stop exporting (process exit). Idempotent."""

    # -- internals -------------------------------------------------------------------------

    def _observes(self, op: Op) -> bool:
        return op.family == "token" and self._audit is not None

    def mount_label(self, mount_point: str) -> str:
        """``mount_name`` of a mount path, remembered per path."""
        label = self._mounts.get(mount_point)
        if label is None:
            label = mount_name(mount_point)
            if len(self._mounts) < _MAX_LABEL_MEMO:
                self._mounts[mount_point] = label
        return label

    def _new_application_labels(self) -> ApplicationLabels:
        return ApplicationLabels(
            self.settings.application_allowlist, self.settings.application_max_values
        )

    def application_labels(self, mount: str) -> ApplicationLabels:
        """The ``Application-Source`` label slots of one mount (by its label)."""
        labels = self._applications.get(mount)
        if labels is None:
            if len(self._applications) >= _MAX_LABEL_MEMO:
                return self._overflow_applications
            labels = self._applications[mount] = self._new_application_labels()
        return labels

    def _begin(self, op: Op, req: Request) -> OpScope:
        mount = self.mount_label(req.mount_point)
        values = req.headers.get("application-source")
        application = self.application_labels(mount).label(values[0] if values else None)
        return OpScope(op, req, mount, application)

    def _end(self, scope: OpScope) -> None:
        try:
            self._record(scope)
        except Exception:
            # telemetry must never break a request
            _log.debug("telemetry failed to record a request", exc_info=True)

    def _record(self, scope: OpScope) -> None:
        if scope.op.family == "token" and self._audit is not None:
            self._audit_line(self._audit, scope)

    def _trace_id(self, scope: OpScope) -> str:
        return trace_id_from_traceparent(scope.request)

    def _audit_line(self, logger: logging.Logger, scope: OpScope) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        req = scope.request
        fields: dict[str, Any] = {
            "mount": scope.mount,
            "mount_path": req.mount_point,
            "role": scope.role,
            "operation": req.operation,
            "outcome": scope.outcome,
            "duration_ms": round(scope.duration_ms(), 3),
            "cache": scope.cache or "none",
            "trace_id": self._trace_id(scope),
            "application": scope.application,
            "vault_request_id": req.id,
        }
        if scope.error_type:
            fields["error_type"] = scope.error_type
        if scope.upstream_status is not None:
            fields["upstream_status"] = scope.upstream_status
        if scope.upstream_request_id:
            fields["upstream_request_id"] = scope.upstream_request_id
        if req.entity_id:
            fields["entity_id"] = req.entity_id
        if req.remote_addr:
            fields["remote_addr"] = req.remote_addr
        _, keys = ctx_shape(scope.ctx)
        if keys:
            fields["ctx_keys"] = ",".join(keys)
        logger.info("token request", extra=fields)
