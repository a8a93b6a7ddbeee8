"""Telemetry settings: read once from the environment given at registration, validated, frozen.

Nothing here imports OpenTelemetry. The rules (see ``docs/telemetry.md``):

* ``ENV=dev``, ``OTEL_SDK_DISABLED=true`` or ``TELEMETRY_ENABLED=false`` turn every signal off.
* Without ``TELEMETRY_ENABLED``, a signal is exported only when an OTLP endpoint is configured
  for it (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the signal's own ``..._TRACES_ENDPOINT`` /
  ``..._METRICS_ENDPOINT``): a plugin nobody configured starts no exporter and no thread.
  ``TELEMETRY_ENABLED=true`` exports even without one, to the OpenTelemetry default
  ``http://localhost:4318``.
* ``TELEMETRY_TRACES_ENABLED`` / ``TELEMETRY_METRICS_ENABLED`` switch one signal off.
* OTLP timeouts are milliseconds, as the OpenTelemetry specification says (the Python SDK
  alone would read seconds); a Go-style duration such as ``10s`` is accepted too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = [
    "DEFAULT_APPLICATION_MAX_VALUES",
    "DEFAULT_METRICS_EXPORT_INTERVAL",
    "SUPPORTED_PROTOCOL",
    "TelemetrySettings",
    "TelemetrySettingsError",
    "parse_duration",
]

SUPPORTED_PROTOCOL = "http/protobuf"
DEFAULT_METRICS_EXPORT_INTERVAL = 60.0  # seconds
DEFAULT_APPLICATION_MAX_VALUES = 20
MAX_APPLICATION_MAX_VALUES = 1000
_MIN_INTERVAL = 0.1
_MAX_INTERVAL = 86_400.0
_MAX_TIMEOUT = 300.0

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_ENVIRONMENT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
APPLICATION_LABEL = re.compile(r"[a-z0-9][a-z0-9_.:/-]{0,63}")
"""What an ``Application-Source`` value must look like (after lower-casing) to become a label."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class TelemetrySettingsError(ValueError):
    """An environment variable has a value telemetry cannot use; ``variable`` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


def parse_duration(text: str, *, bare_unit: float) -> float:
    """Seconds in ``text``: a bare number (times ``bare_unit`` seconds) or a Go-style
    duration such as ``500ms``, ``10s``, ``1m30s``. Raises ``ValueError``."""
    value = text.strip().lower()
    if not value:
        raise ValueError("empty duration")
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number * bare_unit
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(value) or position == 0:
        raise ValueError(f"{text!r} is not a duration (e.g. 500ms, 10s, 1m)")
    return total


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise TelemetrySettingsError(name, f"{raw!r} is not a boolean (true/false)")


def _seconds(
    env: Mapping[str, str], name: str, *, bare_unit: float, low: float, high: float
) -> float | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        seconds = parse_duration(raw, bare_unit=bare_unit)
    except ValueError as exc:
        raise TelemetrySettingsError(name, str(exc)) from None
    if not low <= seconds <= high:
        raise TelemetrySettingsError(name, f"must be between {low:g} s and {high:g} s")
    return seconds


def _endpoint(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise TelemetrySettingsError(name, "must be an http:// or https:// URL")
    return raw


def _timeout(env: Mapping[str, str], signal: str) -> float | None:
    # Signal-specific first, as the SDK resolves endpoints; milliseconds per the OTel spec.
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        value = _seconds(env, name, bare_unit=0.001, low=0.001, high=_MAX_TIMEOUT)
        if value is not None:
            return value
    return None


def _check_protocols(env: Mapping[str, str]) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ):
        raw = (env.get(name) or "").strip()
        if raw and raw.lower() != SUPPORTED_PROTOCOL:
            raise TelemetrySettingsError(
                name, f"only {SUPPORTED_PROTOCOL!r} is supported by this plugin, not {raw!r}"
            )


def _allowlist(env: Mapping[str, str]) -> frozenset[str] | None:
    raw = env.get("TELEMETRY_APPLICATION_ALLOWLIST")
    if raw is None or not raw.strip():
        return None
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    for name in names:
        if not APPLICATION_LABEL.fullmatch(name):
            raise TelemetrySettingsError(
                "TELEMETRY_APPLICATION_ALLOWLIST",
                f"{name[:40]!r} must be 1-64 letters, digits or '_ . : / -'",
            )
    return frozenset(names)


def _max_values(env: Mapping[str, str]) -> int:
    name = "TELEMETRY_APPLICATION_MAX_VALUES"
    raw = (env.get(name) or "").strip()
    if not raw:
        return DEFAULT_APPLICATION_MAX_VALUES
    try:
        value = int(raw)
    except ValueError:
        raise TelemetrySettingsError(name, f"{raw!r} is not an integer") from None
    if not 0 <= value <= MAX_APPLICATION_MAX_VALUES:
        raise TelemetrySettingsError(name, f"must be between 0 and {MAX_APPLICATION_MAX_VALUES}")
    return value


def _sample_rate(env: Mapping[str, str]) -> float:
    name = "TELEMETRY_SAMPLE_RATE"
    raw = (env.get(name) or "").strip()
    if not raw:
        return 1.0
    try:
        rate = float(raw)
    except ValueError:
        raise TelemetrySettingsError(name, f"{raw!r} is not a number") from None
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise TelemetrySettingsError(name, "must be between 0 and 1")
    return rate


@dataclass(frozen=True)
class TelemetrySettings:
    """What telemetry does in this process. The default instance exports nothing.

    ``traces_enabled`` / ``metrics_enabled`` are the *effective* switches (every rule of the
    module docstring applied); ``disabled_reason`` says why both are off. Timeouts and the
    export interval are seconds; the endpoints are full signal URLs (``.../v1/traces``).
    ``None`` leaves the OpenTelemetry SDK's default.
    """

    environment: str = ""
    traces_enabled: bool = False
    metrics_enabled: bool = False
    sample_rate: float = 1.0
    metrics_export_interval: float = DEFAULT_METRICS_EXPORT_INTERVAL
    traces_timeout: float | None = None
    metrics_timeout: float | None = None
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    application_allowlist: frozenset[str] | None = None
    application_max_values: int = DEFAULT_APPLICATION_MAX_VALUES
    audit_log: bool = True
    flush_timeout: float = 1.0
    disabled_reason: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sample_rate) and 0.0 <= self.sample_rate <= 1.0):
            raise ValueError("sample_rate must be between 0 and 1")
        if not _MIN_INTERVAL <= self.metrics_export_interval <= _MAX_INTERVAL:
            raise ValueError("metrics_export_interval is out of range")
        if not 0 <= self.application_max_values <= MAX_APPLICATION_MAX_VALUES:
            raise ValueError("application_max_values is out of range")
        if not 0 < self.flush_timeout <= 30:
            raise ValueError("flush_timeout must be between 0 and 30 seconds")

    @property
    def active(self) -> bool:
        """Whether any signal is exported (and the OpenTelemetry SDK is loaded)."""
        return self.traces_enabled or self.metrics_enabled

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TelemetrySettings:
        """Settings from environment variables. Raises :class:`TelemetrySettingsError`
        naming the first variable whose value is unusable."""
        environment = (env.get("ENV") or "").strip().lower()
        if environment and not _ENVIRONMENT.fullmatch(environment):
            raise TelemetrySettingsError("ENV", f"{environment[:40]!r} is not an environment name")
        audit_log = _bool(env, "SKYFLOW_AUDIT_LOG")
        allowlist = _allowlist(env)
        max_values = _max_values(env)

        def without_signals(reason: str) -> TelemetrySettings:
            # what every outcome shares; the last return adds the signals
            return cls(
                environment=environment,
                application_allowlist=allowlist,
                application_max_values=max_values,
                audit_log=audit_log is not False,
                disabled_reason=reason,
            )

        if environment == "dev":
            return without_signals("ENV=dev")
        if _bool(env, "OTEL_SDK_DISABLED"):
            return without_signals("OTEL_SDK_DISABLED=true")
        master = _bool(env, "TELEMETRY_ENABLED")
        if master is False:
            return without_signals("TELEMETRY_ENABLED=false")

        _check_protocols(env)
        # As the SDK resolves them: a signal's own URL as is, else the base URL + /v1/<signal>.
        generic = _endpoint(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
        base = generic.rstrip("/") if generic else None
        traces_endpoint = _endpoint(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            f"{base}/v1/traces" if base else None
        )
        metrics_endpoint = _endpoint(env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or (
            f"{base}/v1/metrics" if base else None
        )
        traces = _bool(env, "TELEMETRY_TRACES_ENABLED") is not False
        metrics = _bool(env, "TELEMETRY_METRICS_ENABLED") is not False
        reason = ""
        if not (traces or metrics):
            reason = "TELEMETRY_TRACES_ENABLED=false and TELEMETRY_METRICS_ENABLED=false"
        elif master is None:
            traces = traces and traces_endpoint is not None
            metrics = metrics and metrics_endpoint is not None
            if not (traces or metrics):
                reason = "no OTLP endpoint configured (set OTEL_EXPORTER_OTLP_ENDPOINT)"
        interval = _seconds(
            env,
            "TELEMETRY_METRICS_EXPORT_INTERVAL",
            bare_unit=1.0,
            low=_MIN_INTERVAL,
            high=_MAX_INTERVAL,
        )
        if interval is None:  # the standard variable, in milliseconds
            interval = _seconds(
                env,
                "OTEL_METRIC_EXPORT_INTERVAL",
                bare_unit=0.001,
                low=_MIN_INTERVAL,
                high=_MAX_INTERVAL,
            )
        return replace(
            without_signals(reason),
            traces_enabled=traces,
            metrics_enabled=metrics,
            sample_rate=_sample_rate(env),
            metrics_export_interval=interval or DEFAULT_METRICS_EXPORT_INTERVAL,
            traces_timeout=_timeout(env, "TRACES"),
            metrics_timeout=_timeout(env, "METRICS"),
            traces_endpoint=traces_endpoint if traces else None,
            metrics_endpoint=metrics_endpoint if metrics else None,
        )
