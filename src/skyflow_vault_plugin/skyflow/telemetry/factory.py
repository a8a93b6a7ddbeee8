"""The process-wide telemetry: the OpenTelemetry implementation when a signal is on, the
disabled one otherwise. Kept apart from :mod:`.disabled` so that the OpenTelemetry module, which
builds on it, is imported by neither ``disabled`` nor the engine directly."""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping

from .disabled import Telemetry
from .names import LOGGER
from .settings import TelemetrySettings, TelemetrySettingsError

_log = logging.getLogger(LOGGER)


def create_telemetry(env: Mapping[str, str]) -> Telemetry:
    """Telemetry for ``env``. Invalid settings switch telemetry off (logged), never the plugin."""
    try:
        settings = TelemetrySettings.from_env(env)
    except TelemetrySettingsError as exc:
        _log.error("telemetry is off: invalid setting %s", exc)
        return Telemetry(TelemetrySettings(disabled_reason=f"invalid setting {exc.variable}"))
    if not settings.active:
        _log.debug("telemetry is off: %s", settings.disabled_reason)
        return Telemetry(settings)
    try:
        from .otel import OTelTelemetry

        telemetry: Telemetry = OTelTelemetry(settings)
    except Exception:
        _log.error("telemetry could not start; continuing without it", exc_info=True)
        return Telemetry(settings)
    _log.info(
        "telemetry is on",
        extra={
            "traces": settings.traces_enabled,
            "metrics": settings.metrics_enabled,
            "sample_rate": settings.sample_rate,
            "metrics_export_interval_s": settings.metrics_export_interval,
        },
    )
    return telemetry


_process: Telemetry | None = None


def process_telemetry() -> Telemetry:
    """The process-wide telemetry, created from ``os.environ`` on first use.

    One plugin process serves every mount of the plugin, so the providers are shared; a
    mount's Cleanup flushes them and process exit shuts them down.
    """
    global _process
    if _process is None:
        _process = create_telemetry(os.environ)
        if _process.enabled:
            atexit.register(_process.shutdown)
    return _process
