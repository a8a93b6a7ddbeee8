"""The signed assertion and the scope: the claims Skyflow exchanges for a bearer token."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from skyflow_vault_plugin.skyflow.assertion import ASSERTION_LIFETIME, build_assertion, format_scope
from skyflow_vault_plugin.skyflow.credentials import ServiceAccount
from skyflow_vault_plugin.skyflow.errors import InvalidInput


def test_assertion_claims_and_header(account: ServiceAccount) -> None:
    now = 1_700_000_000.7
    assertion = build_assertion(account, now=now)
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "typ": "JWT"}
    claims = jwt.decode(
        assertion,
        account.private_key.public_key(),
        algorithms=["RS256"],
        audience=account.token_uri,
        options={"verify_exp": False},
    )
    assert claims == {
        "iss": account.client_id,
        "key": account.key_id,
        "aud": account.token_uri,
        "sub": account.client_id,
        "exp": 1_700_000_000 + ASSERTION_LIFETIME,
    }
    # short-lived on purpose: the SDK signs 60 minutes, a leaked assertion would mint that long
    assert ASSERTION_LIFETIME == 300
    # the SDK's claim order, so the signed bytes look alike
    payload = json.loads(jwt.utils.base64url_decode(assertion.split(".")[1]))
    assert list(payload) == ["iss", "key", "aud", "sub", "exp"]


@pytest.mark.parametrize(
    "ctx",
    ["user_42", {"user_id": "u1", "tier": 3, "nested": {"a-b": [1, None]}}, 7, 2.5, True, False],
)
def test_assertion_carries_ctx(account: ServiceAccount, ctx: Any) -> None:
    claims = jwt.decode(build_assertion(account, ctx), options={"verify_signature": False})
    assert claims["ctx"] == ctx


def test_format_scope() -> None:
    assert format_scope([]) is None
    assert format_scope(()) is None
    assert format_scope(["a1"]) == "role:a1"
    assert format_scope(["a1", "b2"]) == "role:a1 role:b2"
    for bad in (["a b"], [""], ["ok", " x"]):
        with pytest.raises(InvalidInput) as info:
            format_scope(bad)
        assert info.value.field == "role_ids"
    with pytest.raises(TypeError):
        format_scope("a1")
