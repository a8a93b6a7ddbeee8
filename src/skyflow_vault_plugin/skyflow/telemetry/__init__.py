"""Telemetry for the engine: OpenTelemetry spans and metrics, and the audit log line.

* :mod:`.settings` -- :class:`TelemetrySettings`, read once from the environment.
* :mod:`.core` -- what the engine calls (:meth:`Telemetry.instrument`,
  :meth:`Telemetry.upstream_exchange`, :attr:`Telemetry.on_attempt`, :func:`note_cache`...),
  the names of spans, metrics and attributes, and the disabled implementation.
* :mod:`.otel` -- the OpenTelemetry implementation; imported only when a signal is on, so a
  plugin with telemetry off never loads the SDK.
* :mod:`.factory` -- the process-wide instance, built from the environment on first use.

See ``docs/telemetry.md`` for the environment variables and every name.
"""

from .core import (
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
    ApplicationLabels,
    Handler,
    Op,
    OpScope,
    Telemetry,
    classify_error,
    current_scope,
    mount_name,
    note_cache,
    note_ctx,
    note_error,
    trace_id_from_traceparent,
)
from .factory import create_telemetry, process_telemetry
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
