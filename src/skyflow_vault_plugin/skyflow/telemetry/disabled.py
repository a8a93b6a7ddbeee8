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
from typing import TYPE_CHECKING

from vault_plugin_sdk.framework import FieldData, Request, Response
from vault_plugin_sdk.plugin.hclog import LineTemplate, log_template

from .labels import (
    MAX_LABEL_MEMO,
    ApplicationLabels,
    Memo,
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
AUDIT_MESSAGE = "token request"
AUDIT_TEMPLATE_LIMIT = 1024
"""The most audit line templates kept (and no more than ``MEMO_BUDGET`` characters of them);
then they are made again. A caller chooses the role name of a request for a role that does
not exist, and so a template's key."""


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
        self._audit_templates = Memo[tuple[object, ...], LineTemplate](AUDIT_TEMPLATE_LIMIT)

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
        entity_id, remote_addr = req.entity_id, req.remote_addr
        upstream_request_id = scope.upstream_request_id
        ctx_keys = ",".join(ctx_shape(scope.ctx)[1]) if scope.ctx is not None else ""
        # What repeats from one request to the next is the template's key and text; what a
        # caller or a clock makes different each time is a value (issue 12).
        key = (
            scope.mount,
            req.mount_point,
            scope.role,
            req.operation,
            scope.outcome,
            scope.cache,
            scope.application,
            scope.error_type,
            scope.upstream_status,
            ctx_keys,
            not entity_id,
            not remote_addr,
            not upstream_request_id,
        )
        template = self._audit_templates.entries.get(key)
        if template is None:
            template = _audit_template(*key)
            self._audit_templates.keep(key, template, template.size)
        values: list[object] = [round(scope.duration_ms(), 3), self._trace_id(scope), req.id]
        if entity_id:
            values.append(entity_id)
        if remote_addr:
            values.append(remote_addr)
        if upstream_request_id:
            values.append(upstream_request_id)
        log_template(logger, logging.INFO, template, values)


def _audit_template(
    mount: str,
    mount_path: str,
    role: str,
    operation: str,
    outcome: str,
    cache: str,
    application: str,
    error_type: str,
    upstream_status: int | None,
    ctx_keys: str,
    no_entity: bool,
    no_remote_addr: bool,
    no_upstream_request_id: bool,
) -> LineTemplate:
    """The audit line of a token request: what the key of its template holds is constant;
    the duration, the trace and request ids and what a caller sends are its values, in the
    order ``_audit_line`` gives them."""
    constant: dict[str, object] = {
        "mount": mount,
        "mount_path": mount_path,
        "role": role,
        "operation": operation,
        "outcome": outcome,
        "cache": cache or "none",
        "application": application,
    }
    if error_type:
        constant["error_type"] = error_type
    if upstream_status is not None:
        constant["upstream_status"] = upstream_status
    if ctx_keys:
        constant["ctx_keys"] = ctx_keys
    variable = ["duration_ms", "trace_id", "vault_request_id"]
    if not no_entity:
        variable.append("entity_id")
    if not no_remote_addr:
        variable.append("remote_addr")
    if not no_upstream_request_id:
        variable.append("upstream_request_id")
    return LineTemplate(AUDIT_MESSAGE, constant, variable)
