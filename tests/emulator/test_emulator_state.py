"""The emulator keeps its CA, signing key and accounts across restarts, and rotates keys.

Real subprocesses over HTTPS, restarted on the same state directory, as an application team
would run it (``skyflow-emulator --state-dir ...``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from skyflow_emulator import EmulatorError, EmulatorProcess
from skyflow_vault_plugin.skyflow.client import ExchangePolicy, TokenClient
from skyflow_vault_plugin.skyflow.credentials import load_credentials_file, parse_credentials
from skyflow_vault_plugin.skyflow.errors import SkyflowRejected

POLICY = ExchangePolicy(deadline=10.0, backoff_base=0.01, backoff_max=0.05)


def trusting(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(accounts=1, state_dir=tmp_path / "state")
    try:
        yield emu.start()
    finally:
        emu.stop()


async def test_restart_keeps_ca_accounts_port_and_signing_key(emulator: EmulatorProcess) -> None:
    assert emulator.restored is False
    ca_before = Path(emulator.ca_file).read_bytes()
    file_before = Path(emulator.account_files[0]).read_bytes()
    url_before = emulator.url
    extra = parse_credentials(emulator.admin.create_account("added-at-runtime"))
    async with TokenClient(POLICY, verify=trusting(emulator.ca_file)) as client:
        before = await client.exchange(extra, ["r1"])
    public_before = emulator.admin.public_key_pem()

    emulator.stop()
    emulator.start()

    assert emulator.restored is True
    assert Path(emulator.ca_file).read_bytes() == ca_before
    assert Path(emulator.account_files[0]).read_bytes() == file_before
    assert emulator.url == url_before  # the accounts' tokenURI still points at it
    clients = {a["clientID"] for a in emulator.admin.accounts()}
    first = load_credentials_file(
        emulator.account_files[0], root=os.path.dirname(emulator.account_files[0])
    )
    assert clients == {first.client_id, extra.client_id}
    # Clients configured before the restart keep working, trusting the same CA file.
    async with TokenClient(POLICY, verify=trusting(emulator.ca_file)) as client:
        await client.exchange(first, ["r1"])
        await client.exchange(extra, ["r1"])
    # Tokens issued before the restart still verify with the emulator's public key.
    assert emulator.admin.public_key_pem() == public_before
    claims = jwt.decode(
        before.access_token, public_before, algorithms=["RS256"], audience=emulator.url
    )
    assert claims["sub"] == extra.client_id


async def test_rotate_a_key_then_revoke_the_old_one(emulator: EmulatorProcess) -> None:
    old = load_credentials_file(
        emulator.account_files[0], root=os.path.dirname(emulator.account_files[0])
    )
    rotated = emulator.admin.rotate_key(old.client_id)
    new = parse_credentials(rotated)
    assert new.client_id == old.client_id
    assert new.key_id != old.key_id
    assert new.token_uri == old.token_uri
    listed = {a["clientID"]: a for a in emulator.admin.accounts()}[old.client_id]
    assert listed["keyID"] == new.key_id
    assert listed["keyIDs"] == [new.key_id, old.key_id]

    async with TokenClient(POLICY, verify=trusting(emulator.ca_file)) as client:
        await client.exchange(old, ["r1"])  # both keys work during the rotation
        await client.exchange(new, ["r1"])
        assert emulator.admin.revoke_key(old.client_id, old.key_id) == [new.key_id]
        with pytest.raises(SkyflowRejected, match=r"rejected \(HTTP 401") as refused:
            await client.exchange(old, ["r1"])
        assert "key ID does not match" in (refused.value.skyflow_message or "")  # for the log
        await client.exchange(new, ["r1"])
    key_ids = [r["claims"]["key"] for r in emulator.admin.stats()["requests"]]
    assert key_ids[-3:] == [old.key_id, new.key_id, new.key_id]

    with pytest.raises(EmulatorError, match="409"):
        emulator.admin.revoke_key(old.client_id, new.key_id)  # its only key
    with pytest.raises(EmulatorError, match="404"):
        emulator.admin.rotate_key("no-such-client")

    # The rotation is kept across a restart too.
    emulator.stop()
    emulator.start()
    listed = {a["clientID"]: a for a in emulator.admin.accounts()}[old.client_id]
    assert listed["keyIDs"] == [new.key_id]
