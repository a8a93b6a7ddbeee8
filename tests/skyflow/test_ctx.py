"""The ``ctx`` claim: which values pass, which are refused, and its stable cache-key form."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from skyflow_vault_plugin.skyflow.assertion import build_assertion
from skyflow_vault_plugin.skyflow.credentials import ServiceAccount
from skyflow_vault_plugin.skyflow.ctx import canonical_ctx, validate_ctx
from skyflow_vault_plugin.skyflow.errors import InvalidContext


@pytest.mark.parametrize("ctx", [None, "", "   ", {}])
def test_empty_ctx_dropped(account: ServiceAccount, ctx: Any) -> None:
    claims = jwt.decode(build_assertion(account, ctx), options={"verify_signature": False})
    assert "ctx" not in claims
    assert validate_ctx(ctx) is None
    assert canonical_ctx(ctx) == ""


@pytest.mark.parametrize(
    "ctx",
    [
        {"bad-key": 1},
        {"bad key": 1},
        {"trailing\n": 1},
        {"": 1},
        {1: "x"},
        {"ok": float("nan")},
        {"ok": object()},
        ["a"],
        float("inf"),
        b"bytes",
        {"k": "x" * 9000},
    ],
)
def test_bad_ctx_refused(account: ServiceAccount, ctx: Any) -> None:
    with pytest.raises(InvalidContext) as info:
        validate_ctx(ctx)
    assert info.value.field == "ctx"
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidContext):
        build_assertion(account, ctx)


def test_deep_ctx_refused() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(10):
        deep = {"k": deep}
    with pytest.raises(InvalidContext):
        validate_ctx(deep)


def test_canonical_ctx_is_stable() -> None:
    assert canonical_ctx({"b": 1, "a": {"d": 2, "c": 3}}) == canonical_ctx(
        {"a": {"c": 3, "d": 2}, "b": 1}
    )
    assert canonical_ctx({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert canonical_ctx("user") == '"user"'
    assert canonical_ctx(5) != canonical_ctx("5")
