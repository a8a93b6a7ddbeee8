"""What ``@dataclass`` generates for the framework's records, without compiling it at import.

On Python 3.11 and 3.12 ``@dataclass`` writes each method it generates as source text and
compiles it with ``exec`` when the class is defined, about 0.1 ms a method: the framework's
twelve records cost 60 of those, some 5 ms, on the way to every plugin's handshake. So the
records are declared ``@dataclass(init=False, repr=False, eq=False)`` (frozen ones keep
``frozen=True``, so subclasses and ``FrozenInstanceError`` behave as before), write their
``__init__`` by hand (compiled with the module, like any other function), and take
``__repr__``, ``__eq__`` and ``__hash__`` from :func:`dataclass_methods`, which makes them as
closures over the field names. ``dataclasses.fields``, ``replace`` and ``asdict`` work as on
any dataclass: sdk/tests/framework/test_records.py compares each record with the dataclass
``@dataclass`` makes of the same fields (signature, defaults, repr, equality, hashing).
"""

from __future__ import annotations

import dataclasses
import operator
import reprlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Factory:
    """The default of a field with a ``default_factory``, as ``@dataclass``'s ``__init__``
    shows it (``<factory>``); the hand-written ``__init__`` calls the factory when it sees it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


#: Typed ``Any`` so that it can stand as the default of a parameter of any type.
FACTORY: Any = _Factory()

#: How a frozen record's ``__init__`` sets a field, as the generated one does.
set_field = object.__setattr__


def _values(names: tuple[str, ...]) -> Callable[[object], tuple[Any, ...]]:
    """The named attributes of an object, always as a tuple (``attrgetter`` of one name is not)."""
    if len(names) == 1:
        get_one = operator.attrgetter(names[0])
        return lambda obj: (get_one(obj),)
    if names:
        values: Callable[[object], tuple[Any, ...]] = operator.attrgetter(*names)
        return values
    return lambda obj: ()


def dataclass_methods(cls: type[T]) -> type[T]:
    """Give ``cls``, a dataclass declared with ``repr=False, eq=False``, the ``__repr__``,
    ``__eq__`` and ``__hash__`` that ``repr=True, eq=True`` would have generated.

    A ``__repr__`` the class defines itself is kept, as ``@dataclass`` keeps it. Like
    ``@dataclass`` with ``eq=True``, a frozen class is hashed by its fields and any other
    made unhashable.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    shown = tuple(f.name for f in fields if f.repr)
    compared = _values(tuple(f.name for f in fields if f.compare))
    hashed = _values(tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash)))

    @reprlib.recursive_repr()
    def repr_(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{self.__class__.__qualname__}({inner})"

    def eq(self: Any, other: object) -> object:  # a bool, or NotImplemented
        if other.__class__ is self.__class__:
            return compared(self) == compared(other)
        return NotImplemented

    def hash_(self: Any) -> int:
        return hash(hashed(self))

    methods: dict[str, Any] = {"__eq__": eq}
    if "__repr__" not in cls.__dict__:
        methods["__repr__"] = repr_
    frozen = cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    methods["__hash__"] = hash_ if frozen else None
    for name, method in methods.items():
        if method is not None:
            method.__name__ = name
            method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)
    return cls
