"""One request's telemetry scope: what handlers note while it runs, found through a context
variable. :func:`note_cache`, :func:`note_ctx` and :func:`note_error` do nothing outside an
instrumented request.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from vault_plugin_sdk.framework import Request, Response

from .classify import classify_error
from .names import ERROR, SUCCESS, Op

__all__ = [
    "CURRENT_SCOPE",
    "OpScope",
    "current_scope",
    "note_cache",
    "note_ctx",
    "note_error",
]


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
        "trace_id",
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
        self.trace_id = 0  # the trace of a span exported without a span object, if any
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


CURRENT_SCOPE: ContextVar[OpScope | None] = ContextVar("skyflow_telemetry_scope", default=None)
"""The scope of the request being served; set by the instrumented handler around its call."""


def current_scope() -> OpScope | None:
    """The scope of the request being served in this context, if it is instrumented."""
    return CURRENT_SCOPE.get()


def note_cache(result: str) -> None:
    """Where the token came from: ``hit``, ``miss``, ``coalesced``, ``stale`` or ``off``."""
    scope = CURRENT_SCOPE.get()
    if scope is not None:
        scope.cache = result


def note_ctx(ctx: object) -> None:
    """The resolved ctx. Only its type and sorted map keys are ever reported."""
    scope = CURRENT_SCOPE.get()
    if scope is not None:
        scope.ctx = ctx


def note_error(error_type: str) -> None:
    """An error type the handler knows better than the exception it is about to raise."""
    scope = CURRENT_SCOPE.get()
    if scope is not None:
        scope.noted_error = error_type
