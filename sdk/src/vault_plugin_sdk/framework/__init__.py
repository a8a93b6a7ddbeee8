"""Declarative paths, typed fields, requests, responses and errors for backend plugins."""

from .backend import Backend, BackendConfig, BackendFactory, BackendType, SpecialPaths
from .errors import (
    BadRequest,
    CodedError,
    FieldError,
    LogicalError,
    PermissionDenied,
    ReadOnlyStorageError,
    StorageError,
    UnsupportedOperation,
    UnsupportedPath,
)
from .fields import NAME_PATTERN, Field, FieldType
from .path import OperationHandler, Path, name_part
from .request import FieldData, Operation, Request
from .response import Response
from .storage import Storage, StorageEntry
from .system_view import Alias, Entity, Group, StaticSystemView, SystemView

__all__ = [
    "NAME_PATTERN",
    "Alias",
    "Backend",
    "BackendConfig",
    "BackendFactory",
    "BackendType",
    "BadRequest",
    "CodedError",
    "Entity",
    "Field",
    "FieldData",
    "FieldError",
    "FieldType",
    "Group",
    "LogicalError",
    "Operation",
    "OperationHandler",
    "Path",
    "PermissionDenied",
    "ReadOnlyStorageError",
    "Request",
    "Response",
    "SpecialPaths",
    "StaticSystemView",
    "Storage",
    "StorageEntry",
    "StorageError",
    "SystemView",
    "UnsupportedOperation",
    "UnsupportedPath",
    "name_part",
]
