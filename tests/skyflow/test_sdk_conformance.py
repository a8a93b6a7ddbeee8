"""Our token exchange asks Skyflow exactly what the official Python SDK asks.

Both clients mint a token from the same service account against the emulator subprocess over
real HTTPS; the emulator records what each sent, and the records must match (apart from the
``exp`` value, which depends on when each signed).

The SDK used is ``skyflow.service_account.generate_bearer_token_from_creds`` (and
``generate_bearer_token`` for a credentials file), with the ``role_ids`` and ``ctx`` options.
The SDK's HTTP client (httpx, ``trust_env``) trusts the emulator's CA through ``SSL_CERT_FILE``;
so does our ``TokenClient``.

What the SDK cannot do, and so is not compared here: pretty-printed credentials JSON (it
rewrites newlines before parsing, so only compact JSON works), deadlines, retries and error
details (it flattens errors into one generic message).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from skyflow_emulator import EmulatorProcess
from skyflow_vault_plugin.skyflow.assertion import ASSERTION_LIFETIME
from skyflow_vault_plugin.skyflow.client import ExchangePolicy, TokenClient
from skyflow_vault_plugin.skyflow.credentials import load_credentials_file, parse_credentials
from skyflow_vault_plugin.skyflow.errors import SkyflowRejected

# The SDK is untyped at its edges (no explicit re-exports); treat it as Any in one place.
_sdk_sa: Any = importlib.import_module("skyflow.service_account")
_sdk_errors: Any = importlib.import_module("skyflow.error")
_sdk_logger: Any = importlib.import_module("skyflow.utils.logger")
_sdk_enums: Any = importlib.import_module("skyflow.utils.enums")
generate_bearer_token = _sdk_sa.generate_bearer_token
generate_bearer_token_from_creds = _sdk_sa.generate_bearer_token_from_creds
SDKError: type[Exception] = _sdk_errors.SkyflowError
QUIET = _sdk_logger.Logger(_sdk_enums.LogLevel.OFF)
POLICY = ExchangePolicy(deadline=20.0)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(accounts=1) as emu:
        yield emu


@pytest.fixture(scope="module")
def creds(emulator: EmulatorProcess) -> dict[str, str]:
    return emulator.admin.create_account("conformance")


@pytest.fixture(autouse=True)
def _trust(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", emulator.ca_file)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    emulator.admin.reset()


def _sdk(function: Callable[..., Any], *args: Any) -> Any:
    """Run an SDK call, then collect the HTTP client it leaks.

    The SDK builds an ``httpx.Client`` per call and never closes it; its socket would raise a
    ResourceWarning (an error under this project's warning filter) at some random later point.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return function(*args)
        finally:
            gc.collect()


def _sdk_options(role_ids: list[str], ctx: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"role_ids": role_ids}
    if ctx is not _NO_CTX:
        options["ctx"] = ctx
    return options


_NO_CTX = object()


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    claims = dict(record["claims"])
    exp = claims.pop("exp")
    assert isinstance(exp, int)
    return {
        "client_id": record["client_id"],
        "header": record["header"],
        "claims": claims,
        "scope": record["scope"],
        "role_ids": record["role_ids"],
        "has_ctx": record["has_ctx"],
        "ctx": record["ctx"],
    }


@pytest.mark.parametrize(
    ("role_ids", "ctx"),
    [
        pytest.param([], _NO_CTX, id="no-roles-no-ctx"),
        pytest.param(["role1"], _NO_CTX, id="one-role"),
        pytest.param(["role1", "role2", "role3"], "user_123", id="roles-string-ctx"),
        pytest.param(["r1"], {"user_id": "u1", "tier": 3, "vip": True}, id="map-ctx"),
        pytest.param(["r1"], {"org": {"team": "a"}, "ids": [1, 2]}, id="nested-map-ctx"),
        pytest.param([], 42, id="number-ctx"),
        pytest.param([], 2.5, id="float-ctx"),
        pytest.param(["r1"], False, id="bool-ctx"),
        pytest.param(["r1"], "", id="empty-string-ctx-dropped"),
        pytest.param(["r1"], "   ", id="blank-string-ctx-dropped"),
        pytest.param([], {}, id="empty-map-ctx-dropped"),
    ],
)
async def test_same_request_as_the_sdk(
    emulator: EmulatorProcess, creds: dict[str, str], role_ids: list[str], ctx: Any
) -> None:
    # the SDK replaces raw newlines before json.loads, so it needs compact JSON
    _, sdk_type = await asyncio.to_thread(
        _sdk,
        generate_bearer_token_from_creds,
        json.dumps(creds),
        _sdk_options(role_ids, ctx),
        QUIET,
    )
    assert sdk_type == "Bearer"
    account = parse_credentials(creds)
    async with TokenClient(POLICY) as client:
        ours = await client.exchange(account, role_ids, None if ctx is _NO_CTX else ctx)
    assert ours.token_type == sdk_type

    stats = emulator.admin.stats()
    assert (stats["successes"], stats["failures"]) == (2, 0)
    sdk_record, our_record = stats["requests"]
    assert _comparable(our_record) == _comparable(sdk_record)
    # one deliberate difference: our assertions live 5 minutes, the SDK's 60
    sdk_exp, our_exp = sdk_record["claims"]["exp"], our_record["claims"]["exp"]
    assert abs((our_exp - ASSERTION_LIFETIME) - (sdk_exp - 3600)) <= 5
    # body keys differ in one harmless way: the SDK sends "scope": null without role IDs,
    # we leave the key out
    assert set(our_record["body_keys"]) <= set(sdk_record["body_keys"])


async def test_credentials_file_like_the_sdk(emulator: EmulatorProcess) -> None:
    path = emulator.account_files[0]
    await asyncio.to_thread(
        _sdk, generate_bearer_token, path, {"role_ids": ["a", "b"], "ctx": "u"}, QUIET
    )
    async with TokenClient(POLICY) as client:
        await client.exchange(
            load_credentials_file(path, root=os.path.dirname(path)), ["a", "b"], "u"
        )
    sdk_record, our_record = emulator.admin.stats()["requests"]
    assert _comparable(our_record) == _comparable(sdk_record)


async def test_both_refused_on_bad_credentials(
    emulator: EmulatorProcess, creds: dict[str, str]
) -> None:
    emulator.admin.set_faults(reject=True)
    with pytest.raises(SDKError):
        await asyncio.to_thread(
            _sdk, generate_bearer_token_from_creds, json.dumps(creds), None, QUIET
        )
    async with TokenClient(POLICY) as client:
        with pytest.raises(SkyflowRejected) as info:
            await client.exchange(parse_credentials(creds))
    # unlike the SDK's generic error, ours keeps Skyflow's status and request id
    assert info.value.status == 401
    assert info.value.request_id == emulator.admin.stats()["rejections"][-1]["request_id"]


def test_sdk_cannot_read_pretty_json(creds: dict[str, str]) -> None:
    # documents why we parse credentials ourselves: the SDK rejects what Skyflow users paste
    with pytest.raises(SDKError):
        _sdk(generate_bearer_token_from_creds, json.dumps(creds, indent=2), None, QUIET)
    assert parse_credentials(json.dumps(creds, indent=2)).client_id == creds["clientID"]
