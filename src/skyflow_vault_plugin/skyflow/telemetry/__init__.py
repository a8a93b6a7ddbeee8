"""Telemetry for the engine: OpenTelemetry spans and metrics, and the audit log line.

The modules import one way, each from those above it:

* :mod:`.settings` -- :class:`TelemetrySettings`, read once from the environment.
* :mod:`.names` -- the names of spans, metrics and attributes, and the operations (:class:`Op`).
* :mod:`.labels` -- bounded label values (mount, ``Application-Source``, ctx shape).
* :mod:`.classify` -- the ``error.type`` of a failed request.
* :mod:`.scope` -- one request's :class:`OpScope`, and :func:`note_cache`, :func:`note_ctx`,
  :func:`note_error` for handlers.
* :mod:`.disabled` -- what the engine calls (:meth:`Telemetry.instrument`,
  :meth:`Telemetry.upstream_exchange`, :attr:`Telemetry.on_attempt`) with telemetry off: no
  OpenTelemetry, only the audit log line.
* :mod:`.otel` -- the OpenTelemetry implementation; imported only when a signal is on, so a
  plugin with telemetry off never loads the SDK.
* :mod:`.factory` -- the process-wide instance, built from the environment on first use.

See ``docs/telemetry.md`` for the environment variables and every name.
"""

from .classify import classify_error
from .disabled import Handler, Telemetry
from .factory import create_telemetry, process_telemetry
from .labels import ApplicationLabels, mount_name, trace_id_from_traceparent
from .names import (
    AUDIT_LOGGER,
    CONFIG_DELETE,
    CONFIG_READ,
    CONFIG_WRITE,
    HEALTH_CHECK,
    ROLE_DELETE,
    ROLE_LIST,
    ROLE_READ,
    ROLE_WRITE,
    TOKEN_GENERATE,
    Op,
)
from .scope import OpScope, current_scope, note_cache, note_ctx, note_error
from .settings import TelemetrySettings, TelemetrySettingsError

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
    "TelemetrySettings",
    "TelemetrySettingsError",
    "classify_error",
    "create_telemetry",
    "current_scope",
    "mount_name",
    "note_cache",
    "note_ctx",
    "note_error",
    "process_telemetry",
    "trace_id_from_traceparent",
]
