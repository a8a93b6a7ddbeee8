"""What grpclib's ``Server`` serves, typed with grpclib's public API only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from grpclib.const import Handler


class Servable(Protocol):
    """A gRPC service implementation: the generated ``*Base`` classes and their subclasses."""

    def __mapping__(self) -> Mapping[str, Handler]:
        """The service's methods by full gRPC path."""
        ...
