"""Errors a backend raises, and how each reaches the HTTP caller.

Two channels, as in Vault's SDK:

* problems the *caller* can fix are returned as an error response
  (:meth:`Response.error <vault_plugin_sdk.framework.response.Response.error>`, HTTP 400),
  or raised as :class:`FieldError` / :class:`BadRequest`, which the framework turns into one;
* everything else is raised. :class:`LogicalError` subclasses carry an exact HTTP status;
  any other exception becomes a generic 500 "internal error" whose details stay in the
  plugin's log, so that no stack trace or secret reaches the caller.

Exception tree::

    LogicalError
    ├── CodedError              (any status, e.g. 404, 502, 503)
    ├── BadRequest              (400)
    │   └── FieldError          (400, names the offending field)
    ├── PermissionDenied        (403)
    ├── UnsupportedPath         (404)
    └── UnsupportedOperation    (405)
    StorageError
    └── ReadOnlyStorageError
"""

from __future__ import annotations


class LogicalError(Exception):
    """An error with a definite HTTP status, reported to the caller with its message."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CodedError(LogicalError):
    """An error answered with an explicit HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status")
        super().__init__(message)
        self.status = status


class BadRequest(LogicalError):
    """The request is wrong in a way the caller can fix (HTTP 400)."""

    status = 400


class FieldError(BadRequest):
    """A request field is missing or has an invalid value (HTTP 400, naming the field)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"invalid value for field '{field}': {problem}")
        self.field = field
        self.problem = problem


class PermissionDenied(LogicalError):
    """The caller may not do this (HTTP 403)."""

    status = 403

    def __init__(self, message: str = "permission denied") -> None:
        super().__init__(message)


class UnsupportedPath(LogicalError):
    """No path of the backend matches the request (HTTP 404)."""

    status = 404

    def __init__(self, message: str = "unsupported path") -> None:
        super().__init__(message)


class UnsupportedOperation(LogicalError):
    """The path exists but does not support this operation (HTTP 405)."""

    status = 405

    def __init__(self, message: str = "unsupported operation") -> None:
        super().__init__(message)


class StorageError(Exception):
    """The host's storage failed to serve a call."""


class ReadOnlyStorageError(StorageError):
    """The storage is read-only (a performance or HA standby, or a mount being set up as one)."""
