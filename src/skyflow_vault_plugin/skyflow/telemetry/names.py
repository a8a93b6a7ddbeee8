"""The names telemetry emits: span names as the Go plugin has them (so dashboards keep
working), metric and attribute names, outcomes, and the instrumented operations.

``docs/telemetry.md`` lists every one of them. Every name here is public and the package
re-exports the operations, so this module keeps no ``__all__`` of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

AUDIT_LOGGER = "skyflow.audit"
LOGGER = "skyflow_vault_plugin.skyflow.telemetry.core"
"""The logger of telemetry's own records: the name it has always logged under (operators may
filter on it), kept when ``core.py`` was split into these modules."""
UNKNOWN_ROLE = "_unknown"
"""The ``role`` metric label of a request for a role that does not exist (names are free text
there, and would make the label unbounded)."""


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
