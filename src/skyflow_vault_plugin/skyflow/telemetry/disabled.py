"""Telemetry switched off, and what the engine calls on every request.

The engine wraps each path handler once, when its paths are built
(``telemetry.instrument(ROLE_READ, handler)``), wraps each Skyflow exchange
(``with telemetry.upstream_exchange(): ...``) and hands ``telemetry.on_attempt`` to its
:class:`~skyflow_vault_plugin.skyflow.client.TokenClient`. Handlers add what only they know
with :func:`.scope.note_cache`, :func:`.scope.note_ctx` and :func:`.scope.note_error`.

:class:`Telemetry` here is the disabled implementation: ``instrument`` returns the handler
unchanged (token requests keep a light wrapper for the audit log line), ``on_attempt`` is
``None`` and ``upstream_exchange`` returns a shared no-op context manager, so a request pays
for no attribute dictionaries, no spans and no metric points. It never imports OpenTelemetry;
:mod:`.otel` does, and is imported only when a signal is switched on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from vault_plugin_sdk.framework import FieldData, Request, Response
from vault_plugin_sdk.plugin.hclog import log_fields

from .labels import (
    MAX_LABEL_MEMO,
    ApplicationLabels,
    ctx_shape,
    mount_name,
    trace_id_from_traceparent,
)
from .names import AUDIT_LOGGER, LOGGER, Op
from .scope import CURRENT_SCOPE, OpScope
from .settings import TelemetrySettings

if TYPE_CHECKING:
    from ..client import AttemptHook

__all__ = ["Handler", "Telemetry"]

Handler = Callable[[Request, FieldData], Awaitable[Response | None]]
"""A path operation's callback (the SDK's ``OperationCallback``)."""

_log = logging.getLogger(LOGGER)


class _NoExchange(AbstractContextManager[None]):
    """The shared context manager of a Skyflow exchange nobody observes."""

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_EXCHANGE = _NoExchange()


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
            token = CURRENT_SCOPE.set(scope)
            try:
                response = await handler(req, data)
            except BaseException as exc:
                scope.fail(exc)
                raise
            else:
                scope.settle(response)
                return response
            finally:
                CURRENT_SCOPE.reset(token)
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
            if len(self._mounts) < MAX_LABEL_MEMO:
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
            if len(self._applications) >= MAX_LABEL_MEMO:
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
        # log_fields: the same line as logger.info(..., extra=fields), without a LogRecord
        # when the plugin logs to the host (a line per request).
        log_fields(logger, logging.INFO, "token request", fields)
