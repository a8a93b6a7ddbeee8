"""``with`` support for objects that start and close, written once.

The emulator's process and admin client use it, and so do the OpenBao harness's server,
cluster and client in ``skyflow-devtools`` (which depends on this distribution, never the
other way round).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["Closeable", "Startable"]


class Closeable(ABC):
    """``with obj:`` gives ``obj`` and closes it on the way out."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Startable(Closeable):
    """``with obj:`` starts ``obj``, and closes it on the way out, or at once when the start
    fails half-way (so that nothing it started is left behind)."""

    @abstractmethod
    def start(self) -> object:
        """Start; keyword arguments, if any, must all have defaults."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self
