"""The framework's records behave as the dataclasses ``@dataclass`` makes of their fields.

They write ``__init__`` by hand and take ``__repr__``, ``__eq__`` and ``__hash__`` from
``_records.dataclass_methods``, so that no generated method is compiled at import (the
plugin's start). Each record is compared here with its twin: the dataclass that
``dataclasses.make_dataclass`` builds from the same fields, with every method generated.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from typing import Any

import pytest

from vault_plugin_sdk import framework
from vault_plugin_sdk.framework import Field, FieldType, Request, Response, StorageEntry

RECORDS: list[type[Any]] = [
    framework.SpecialPaths,
    framework.BackendConfig,
    framework.Field,
    framework.OperationHandler,
    framework.Path,
    framework.Request,
    framework.Response,
    framework.StorageEntry,
    framework.Alias,
    framework.Entity,
    framework.Group,
    framework.StaticSystemView,
]

# What a record defines itself and its twin must keep (a repr hiding a secret, a check).
OWN_METHODS = ("__repr__", "__post_init__")


def twin(cls: type[Any]) -> type[Any]:
    """The dataclass ``@dataclass`` makes of ``cls``'s fields, every method generated."""
    specs: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        options: dict[str, Any] = {"repr": f.repr, "compare": f.compare, "hash": f.hash}
        if f.default is not dataclasses.MISSING:
            options["default"] = f.default
        if f.default_factory is not dataclasses.MISSING:
            options["default_factory"] = f.default_factory
        specs.append((f.name, f.type, dataclasses.field(**options)))
    own = {name: cls.__dict__[name] for name in OWN_METHODS if name in cls.__dict__}
    frozen = cls.__dataclass_params__.frozen
    return dataclasses.make_dataclass(cls.__name__, specs, frozen=frozen, namespace=own)


def arguments(cls: type[Any], tag: str) -> dict[str, str]:
    """A distinct string for every parameter of ``cls`` (a string suits each record's checks)."""
    return {name: f"{tag}-{name}" for name in inspect.signature(cls).parameters}


def required(cls: type[Any]) -> dict[str, str]:
    return {
        name: f"req-{name}"
        for name, p in inspect.signature(cls).parameters.items()
        if p.default is inspect.Parameter.empty
    }


def values(record: object) -> list[Any]:
    return [getattr(record, f.name) for f in dataclasses.fields(record)]  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_signature_is_the_generated_one(cls: type[Any]) -> None:
    def shape(of: type[Any]) -> list[tuple[str, Any, str, Any]]:
        return [
            (p.name, p.kind, repr(p.default), p.annotation)
            for p in inspect.signature(of).parameters.values()
        ]

    assert shape(cls) == shape(twin(cls))
    assert cls.__match_args__ == twin(cls).__match_args__


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_defaults_and_factories_are_the_generated_ones(cls: type[Any]) -> None:
    ours, theirs = cls(**required(cls)), twin(cls)(**required(cls))
    assert values(ours) == values(theirs)
    assert repr(ours) == repr(theirs)
    # A factory makes a new value for each instance; a plain default is shared.
    again = cls(**required(cls))
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            made = getattr(ours, f.name)
            assert made == f.default_factory()
            if isinstance(made, (dict, list)):
                assert made is not getattr(again, f.name), f.name


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_given_values_positionally_or_by_name(cls: type[Any]) -> None:
    given = arguments(cls, "v")
    by_name, by_position = cls(**given), cls(*given.values())
    theirs = twin(cls)(**given)
    assert values(by_name) == values(by_position) == values(theirs) == list(given.values())
    assert repr(by_name) == repr(theirs)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_equality_and_hashing_are_the_generated_ones(cls: type[Any]) -> None:
    given = arguments(cls, "v")
    one, same = cls(**given), cls(**given)
    assert one == same
    assert (one != same) is False
    assert one.__eq__(object()) is NotImplemented
    theirs = twin(cls)
    for name in given:
        other = cls(**{**given, name: "changed"})
        expected = theirs(**given) == theirs(**{**given, name: "changed"})
        assert (one == other) is expected, name
    if cls.__dataclass_params__.frozen:
        assert hash(one) == hash(same) == hash(theirs(**given))
    else:
        assert cls.__hash__ is None
        assert theirs.__hash__ is None


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_frozen_records_stay_frozen(cls: type[Any]) -> None:
    record = cls(**arguments(cls, "v"))
    name = dataclasses.fields(cls)[0].name
    if cls.__dataclass_params__.frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, name, "x")
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(record, name)
    else:
        setattr(record, name, "x")
        assert getattr(record, name) == "x"


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_replace_and_asdict_work(cls: type[Any]) -> None:
    record = cls(**arguments(cls, "v"))
    name = dataclasses.fields(cls)[-1].name
    changed = dataclasses.replace(record, **{name: "new"})
    assert type(changed) is cls
    assert getattr(changed, name) == "new"
    assert dataclasses.asdict(record) == dataclasses.asdict(twin(cls)(**arguments(cls, "v")))


def test_methods_are_named_as_generated_ones_are() -> None:
    assert Request.__eq__.__qualname__ == "Request.__eq__"
    assert Response.__repr__.__qualname__ == "Response.__repr__"
    assert Field.__hash__.__qualname__ == "Field.__hash__"


def test_a_record_that_contains_itself_repr_as_generated() -> None:
    ours, theirs = Response(), twin(Response)()
    ours.data["me"], theirs.data["me"] = ours, theirs
    assert (
        repr(ours)
        == repr(theirs)
        == "Response(data={'me': ...}, warnings=[], status=None, errors=[])"
    )


def test_a_record_keeps_its_own_repr() -> None:
    entry = StorageEntry("config", b"secret value")
    assert "secret" not in repr(entry)
    assert repr(entry) == "StorageEntry(key='config', value=<12 bytes>, seal_wrap=False)"


def test_records_can_be_subclassed_as_dataclasses() -> None:
    @dataclasses.dataclass(frozen=True)
    class NamedField(Field):
        label: str = ""

    named = NamedField(FieldType.STRING, "a field", label="x")
    assert (named.type, named.label) == (FieldType.STRING, "x")
    assert named == NamedField(FieldType.STRING, "a field", label="x")
    with pytest.raises(TypeError, match="non-frozen"):

        @dataclasses.dataclass
        class Thawed(Field):  # type: ignore[misc]  # the point of the test
            pass

    @dataclasses.dataclass
    class TaggedRequest(Request):
        tag: str = ""

    tagged = TaggedRequest("read", "creds/a", storage=None, tag="t")  # type: ignore[arg-type]
    assert tagged.tag == "t"
    assert tagged.data == {}


def test_importing_the_framework_compiles_no_generated_method() -> None:
    """The point of the records' hand-written methods: their import execs no method text.

    Frozen records still let ``@dataclass`` make ``__setattr__`` and ``__delattr__``, which
    keeps them frozen for subclasses too.
    """
    probe = (
        "import builtins, json, sys\n"
        "texts = []\n"
        "real = builtins.exec\n"
        "def watching(source, *args, **kwargs):\n"
        "    if sys._getframe(1).f_globals.get('__name__') == 'dataclasses':\n"
        "        texts.append(source)\n"
        "    return real(source, *args, **kwargs)\n"
        "builtins.exec = watching\n"
        "import vault_plugin_sdk.framework\n"
        "builtins.exec = real\n"
        "print(json.dumps(texts))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    )
    compiled = "\n".join(json.loads(done.stdout))
    for method in ("__init__", "__repr__", "__eq__", "__hash__"):
        assert f"def {method}(" not in compiled, method
