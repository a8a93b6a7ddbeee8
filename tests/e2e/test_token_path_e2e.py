"""The token path inside a real OpenBao, against the Skyflow emulator: reuse, coalescing,
invalidation, deadlines, retries and serving a cached token while Skyflow is down.

Issue 4's "done when". Upstream calls are counted per service account (every test uses a
fresh mount with a fresh account), so a request still sleeping in the emulator from an
earlier test can never be counted against a later one.

A second catalog entry, ``skyflow-fast``, runs the same plugin with
``SKYFLOW_REQUEST_DEADLINE=3`` so that a hanging Skyflow is given up on after 3 s instead of
the default 30 s.

Access tokens are only compared through their SHA-256 and never appear in an assertion.
"""

from __future__ import annotations

import datetime
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from skyflow_devtools.catalog import PluginInfo, install_plugin, python_launcher
from skyflow_devtools.client import BaoClient, error_text
from skyflow_emulator.process import EmulatorAdmin
from tests.issued import Issued, calls, issued, read_creds, sha256

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = pytest.mark.e2e

PLUGIN = "skyflow"
FAST_PLUGIN = "skyflow-fast"
FAST_DEADLINE = 3.0
DEADLINE_SLACK = 3.0
CONCURRENT_READS = 64


# -- helpers -------------------------------------------------------------------------------


def make_mount(
    stack: SkyflowStack,
    *,
    plugin: str = PLUGIN,
    roles: dict[str, Any] | None = None,
    validate: bool = True,
) -> tuple[str, str]:
    """A fresh configured mount of ``plugin``; returns (path, the account's client ID)."""
    account = stack.new_account()
    path = f"skyflow/tokenpath-{secrets.token_hex(3)}"
    client = stack.client()
    client.enable_secrets(path, plugin)
    client.write(
        f"{path}/config",
        {"credentials_json": json.dumps(account), "validate_credentials": validate},
    )
    for name, body in (roles or {}).items():
        client.write(f"{path}/roles/{name}", body)
    return path, account["clientID"]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def public_key(stack: SkyflowStack) -> str:
    return stack.admin.public_key_pem()


@pytest.fixture(scope="module")
def fast_plugin(stack: SkyflowStack) -> PluginInfo:
    """The plugin registered again, with a 3 s upstream deadline."""
    return install_plugin(
        stack.bao,
        name=FAST_PLUGIN,
        executable=python_launcher("skyflow_vault_plugin.cli"),
        env={"SKYFLOW_REQUEST_DEADLINE": str(int(FAST_DEADLINE))},
    )


@pytest.fixture
def client(stack: SkyflowStack) -> BaoClient:
    return stack.client()


# -- reuse ---------------------------------------------------------------------------------


def test_repeated_reads_reach_skyflow_once(
    stack: SkyflowStack, public_key: str, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"producer": {"role_ids": "p-1"}})
    before = calls(fresh_emulator, client_id)
    first = issued(stack, public_key, read_creds(client, path, "producer", "batch-7"))
    for _ in range(9):
        again = issued(stack, public_key, read_creds(client, path, "producer", "batch-7"))
        assert again.token_sha256 == first.token_sha256
        assert again.expires_at == first.expires_at  # describes the token returned
        assert again.expires_in <= first.expires_in
        assert again.warnings == []
    assert calls(fresh_emulator, client_id) - before == 1
    # A map ctx is another key, shared by every read of that same map (in any key order).
    mapped = issued(stack, public_key, read_creds(client, path, "producer", {"a": "1", "b": "2"}))
    reordered = issued(
        stack, public_key, read_creds(client, path, "producer", {"b": "2", "a": "1"})
    )
    assert mapped.token_sha256 != first.token_sha256
    assert reordered.token_sha256 == mapped.token_sha256
    assert calls(fresh_emulator, client_id) - before == 2


def test_concurrent_cold_reads_reach_skyflow_once(
    stack: SkyflowStack, public_key: str, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"consumer": {"role_ids": "c-1,c-2"}})
    before = calls(fresh_emulator, client_id)
    fresh_emulator.set_faults(latency=1.0)  # every reader arrives while the one call is in flight
    barrier = threading.Barrier(CONCURRENT_READS)

    def read(_: int) -> tuple[int, str]:
        with BaoClient(stack.bao.addr, stack.bao.root_token, timeout=30) as own:
            barrier.wait(timeout=30)
            response = own.request("GET", f"{path}/creds/consumer", params={"ctx": "cold"})
        if response.status_code != 200:
            return response.status_code, ""
        token = response.json()["data"]["access_token"]
        return 200, sha256(token)

    with ThreadPoolExecutor(max_workers=CONCURRENT_READS) as pool:
        results = list(pool.map(read, range(CONCURRENT_READS)))
    statuses = sorted({status for status, _ in results})
    hashes = {digest for _, digest in results}
    assert statuses == [200]
    assert len(hashes) == 1
    assert calls(fresh_emulator, client_id) - before == 1


def test_a_failure_reaches_every_waiter_and_is_not_cached(
    stack: SkyflowStack, public_key: str, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"producer": {"role_ids": "p-1"}})
    before = calls(fresh_emulator, client_id)
    fresh_emulator.set_faults(latency=1.0, reject=True)
    readers = 16
    barrier = threading.Barrier(readers)

    def read(_: int) -> int:
        with BaoClient(stack.bao.addr, stack.bao.root_token, timeout=30) as own:
            barrier.wait(timeout=30)
            return own.request("GET", f"{path}/creds/producer").status_code

    with ThreadPoolExecutor(max_workers=readers) as pool:
        statuses = list(pool.map(read, range(readers)))
    assert statuses == [502] * readers
    assert calls(fresh_emulator, client_id) - before == 1
    fresh_emulator.reset()
    got = issued(stack, public_key, read_creds(stack.client(), path, "producer"))
    assert got.claims["sub"] == client_id


def test_cache_tokens_false_reaches_skyflow_on_every_read(
    stack: SkyflowStack, public_key: str, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"fresh": {"role_ids": "f-1", "cache_tokens": False}})
    before = calls(fresh_emulator, client_id)
    hashes = {
        issued(stack, public_key, read_creds(client, path, "fresh", "same")).token_sha256
        for _ in range(4)
    }
    assert len(hashes) == 4
    assert calls(fresh_emulator, client_id) - before == 4
    # Turning it back on makes the next reads share one token.
    client.write(f"{path}/roles/fresh", {"cache_tokens": True})
    hashes = {
        issued(stack, public_key, read_creds(client, path, "fresh", "same")).token_sha256
        for _ in range(3)
    }
    assert len(hashes) == 1
    assert calls(fresh_emulator, client_id) - before == 5


def test_min_remaining_ttl_is_validated_against_the_token_lifetime(
    stack: SkyflowStack, client: BaoClient
) -> None:
    path, _ = make_mount(stack)
    for value in (3600, "60m", "2h"):
        response = client.request(
            "POST", f"{path}/roles/r", json={"role_ids": "r-1", "min_remaining_ttl": value}
        )
        assert "min_remaining_ttl" in error_text(response, 400)
    client.write(f"{path}/roles/r", {"role_ids": "r-1", "min_remaining_ttl": "59m"})
    assert client.read(f"{path}/roles/r")["data"]["min_remaining_ttl"] == 59 * 60


# -- invalidation --------------------------------------------------------------------------


def test_a_role_change_is_visible_on_the_very_next_read(
    stack: SkyflowStack, public_key: str, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"producer": {"role_ids": "p-old"}})
    before = calls(fresh_emulator, client_id)
    old = issued(stack, public_key, read_creds(client, path, "producer", "k"))
    assert old.claims["scope"] == ["p-old"]
    client.write(f"{path}/roles/producer", {"role_ids": ["p-new-1", "p-new-2"]})
    new = issued(stack, public_key, read_creds(client, path, "producer", "k"))
    assert new.claims["scope"] == ["p-new-1", "p-new-2"]
    assert new.token_sha256 != old.token_sha256
    # Deleting and recreating the role drops its tokens too.
    client.delete(f"{path}/roles/producer")
    error_text(read_creds(client, path, "producer", "k"), 400)
    client.write(f"{path}/roles/producer", {"role_ids": "p-again"})
    again = issued(stack, public_key, read_creds(client, path, "producer", "k"))
    assert again.claims["scope"] == ["p-again"]
    assert calls(fresh_emulator, client_id) - before == 3


def test_other_roles_keep_their_tokens_when_one_role_changes(
    stack: SkyflowStack, public_key: str, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"a": {"role_ids": "a-1"}, "b": {"role_ids": "b-1"}})
    before = calls(fresh_emulator, client_id)
    first_b = issued(stack, public_key, read_creds(client, path, "b"))
    issued(stack, public_key, read_creds(client, path, "a"))
    client.write(f"{path}/roles/a", {"description": "touched"})
    second_b = issued(stack, public_key, read_creds(client, path, "b"))
    assert second_b.token_sha256 == first_b.token_sha256
    issued(stack, public_key, read_creds(client, path, "a"))
    assert calls(fresh_emulator, client_id) - before == 3


def test_a_config_change_is_visible_on_the_very_next_read(
    stack: SkyflowStack, public_key: str, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, old_client_id = make_mount(stack, roles={"producer": {"role_ids": "p-1"}})
    old = issued(stack, public_key, read_creds(client, path, "producer"))
    assert old.claims["sub"] == old_client_id
    rotated = stack.new_account()
    client.write(f"{path}/config", {"credentials_json": json.dumps(rotated)})
    new = issued(stack, public_key, read_creds(client, path, "producer"))
    assert new.claims["sub"] == rotated["clientID"]
    assert new.token_sha256 != old.token_sha256
    # A config write that keeps the account still drops the mount's tokens.
    client.write(f"{path}/config", {"description": "same account"})
    after = issued(stack, public_key, read_creds(client, path, "producer"))
    assert after.claims["sub"] == rotated["clientID"]
    assert after.token_sha256 != new.token_sha256
    # Deleting the config stops issuance at once; writing it back resumes it.
    client.delete(f"{path}/config")
    error_text(read_creds(client, path, "producer"), 400)
    client.write(f"{path}/config", {"credentials_json": json.dumps(rotated)})
    back = issued(stack, public_key, read_creds(client, path, "producer"))
    assert back.token_sha256 != after.token_sha256


# -- deadline and retries ------------------------------------------------------------------


def test_a_hanging_skyflow_yields_503_within_the_deadline(
    stack: SkyflowStack, fast_plugin: PluginInfo, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(
        stack, plugin=fast_plugin.name, roles={"producer": {"role_ids": "p-1"}}
    )
    before = calls(fresh_emulator, client_id)
    fresh_emulator.set_faults(latency=FAST_DEADLINE + 3)
    started = time.monotonic()
    response = read_creds(client, path, "producer", "hang")
    elapsed = time.monotonic() - started
    message = error_text(response, 503)
    assert elapsed < FAST_DEADLINE + DEADLINE_SLACK
    assert elapsed >= FAST_DEADLINE - 0.5  # it did wait for Skyflow, up to the deadline
    assert "Skyflow" in message
    assert calls(fresh_emulator, client_id) - before >= 1


@pytest.mark.parametrize(
    ("knobs", "min_elapsed"),
    [
        ({"fail_status": 500, "fail_count": 1}, 0.0),
        ({"fail_status": 503, "fail_count": 1}, 0.0),
        ({"fail_status": 429, "fail_count": 1, "retry_after": 1}, 0.9),
    ],
    ids=["500", "503", "429-retry-after-1s"],
)
def test_one_transient_failure_is_retried_into_a_200(
    stack: SkyflowStack,
    public_key: str,
    client: BaoClient,
    fresh_emulator: EmulatorAdmin,
    knobs: dict[str, Any],
    min_elapsed: float,
) -> None:
    path, client_id = make_mount(stack, roles={"producer": {"role_ids": "p-1"}})
    before = calls(fresh_emulator, client_id)
    fresh_emulator.set_faults(**knobs)
    started = time.monotonic()
    got = issued(stack, public_key, read_creds(client, path, "producer", "retry"))
    elapsed = time.monotonic() - started
    assert got.claims["sub"] == client_id
    assert calls(fresh_emulator, client_id) - before == 2
    assert elapsed >= min_elapsed  # Retry-After was honoured
    assert elapsed < 10


def test_a_credential_rejection_is_not_retried(
    stack: SkyflowStack, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"producer": {"role_ids": "p-1"}})
    before = calls(fresh_emulator, client_id)
    fresh_emulator.set_faults(reject=True)
    message = error_text(read_creds(client, path, "producer", "reject"), 502)
    assert calls(fresh_emulator, client_id) - before == 1
    rejections = [r for r in fresh_emulator.stats()["rejections"] if r["client_id"] == client_id]
    assert len(rejections) == 1
    assert rejections[0]["request_id"] in message


def test_rate_limiting_past_the_retries_is_503(
    stack: SkyflowStack, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(stack, roles={"producer": {"role_ids": "p-1"}})
    before = calls(fresh_emulator, client_id)
    fresh_emulator.set_faults(fail_status=429, fail_count=1000, retry_after=0)
    message = error_text(read_creds(client, path, "producer", "limited"), 503)
    assert "429" in message
    attempts = calls(fresh_emulator, client_id) - before
    assert 2 <= attempts <= 10  # retried, but boundedly


def test_a_retry_after_past_the_deadline_is_not_waited_for(
    stack: SkyflowStack, fast_plugin: PluginInfo, client: BaoClient, fresh_emulator: EmulatorAdmin
) -> None:
    path, client_id = make_mount(
        stack, plugin=fast_plugin.name, roles={"producer": {"role_ids": "p-1"}}
    )
    before = calls(fresh_emulator, client_id)
    fresh_emulator.set_faults(fail_status=429, fail_count=1000, retry_after=60)
    started = time.monotonic()
    message = error_text(read_creds(client, path, "producer"), 503)
    assert time.monotonic() - started < FAST_DEADLINE + DEADLINE_SLACK
    assert "Retry-After" in message
    assert calls(fresh_emulator, client_id) - before == 1


# -- serving through an outage -------------------------------------------------------------


def _stale_setup(
    stack: SkyflowStack, public_key: str, fresh_emulator: EmulatorAdmin, plugin: str
) -> tuple[str, str, Issued]:
    """A mount whose cached token is valid but below the role's min_remaining_ttl.

    The emulator issues 120 s tokens while the role wants 10 minutes left (the default), so
    every read while Skyflow is healthy mints a new token, and the latest one stays cached.
    """
    fresh_emulator.set_token_lifetime(120)
    path, client_id = make_mount(
        stack, plugin=plugin, roles={"producer": {"role_ids": "p-1"}}, validate=False
    )
    client = stack.client()
    first = issued(stack, public_key, read_creds(client, path, "producer", "outage"))
    latest = issued(stack, public_key, read_creds(client, path, "producer", "outage"))
    assert latest.token_sha256 != first.token_sha256  # below min_remaining_ttl: re-minted
    assert latest.expires_in <= 120
    return path, client_id, latest


@pytest.mark.parametrize("outage", ["down", "hanging"])
def test_a_cached_token_is_served_while_skyflow_is_down(
    stack: SkyflowStack,
    public_key: str,
    client: BaoClient,
    fresh_emulator: EmulatorAdmin,
    fast_plugin: PluginInfo,
    outage: str,
) -> None:
    path, client_id, latest = _stale_setup(stack, public_key, fresh_emulator, fast_plugin.name)
    before = calls(fresh_emulator, client_id)
    if outage == "down":
        fresh_emulator.set_faults(fail_status=503, fail_count=1000)
    else:
        fresh_emulator.set_faults(latency=FAST_DEADLINE + 3)
    started = time.monotonic()
    served = issued(stack, public_key, read_creds(client, path, "producer", "outage"))
    assert time.monotonic() - started < FAST_DEADLINE + DEADLINE_SLACK
    assert served.token_sha256 == latest.token_sha256
    assert served.claims["sub"] == client_id
    assert len(served.warnings) == 1
    assert "unavailable" in served.warnings[0]
    # expires_in/expires_at describe the token actually returned.
    assert abs(served.claims["exp"] - _epoch(served.expires_at)) <= 2
    assert 0 < served.expires_in <= 120
    assert calls(fresh_emulator, client_id) - before >= 1  # Skyflow was tried first
    # Without a cached token for that key there is nothing to serve: 503.
    error_text(read_creds(client, path, "producer", "never-cached"), 503)


def _epoch(rfc3339: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339).timestamp()
