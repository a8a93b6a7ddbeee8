"""The emulator as a real HTTPS server in a subprocess, driven like the demo and e2e tests do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import certifi
import jwt
import pytest

from skyflow_emulator import EmulatorError, EmulatorProcess
from skyflow_vault_plugin.skyflow.client import ExchangePolicy, TokenClient
from skyflow_vault_plugin.skyflow.credentials import (
    ServiceAccount,
    load_credentials_file,
    parse_credentials,
)
from skyflow_vault_plugin.skyflow.errors import SkyflowUntrusted
from skyflow_vault_plugin.skyflow.trust import TrustStore

POLICY = ExchangePolicy(deadline=10.0, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(accounts=2) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _clean(emulator: EmulatorProcess) -> None:
    emulator.admin.reset()


@pytest.fixture
def trust_emulator(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenSSL's default verify paths honour SSL_CERT_FILE; TokenClient's context reads it
    monkeypatch.setenv("SSL_CERT_FILE", emulator.ca_file)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def test_ready_line_and_files(emulator: EmulatorProcess) -> None:
    assert emulator.url.startswith("https://127.0.0.1:")
    assert int(emulator.url.rsplit(":", 1)[1]) > 0
    assert Path(emulator.ca_file).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert len(emulator.account_files) == 2
    for path in emulator.account_files:
        assert os.stat(path).st_mode & 0o077 == 0
        account = _load(path)
        assert account.token_uri == f"{emulator.url}/v1/auth/sa/oauth/token"
    # the CA, the kept state, the account files and the log; private keys owner-only
    names = sorted(p.name for p in emulator.state_dir.iterdir())
    assert names == [
        "account-1.json",
        "account-2.json",
        "ca-key.pem",
        "ca.pem",
        "emulator.log",
        "signing-key.pem",
        "state.json",
    ]
    for private in ("ca-key.pem", "signing-key.pem"):
        assert os.stat(emulator.state_dir / private).st_mode & 0o077 == 0
    assert "PRIVATE" not in (emulator.state_dir / "state.json").read_text()


@pytest.mark.usefixtures("trust_emulator")
async def test_token_client_over_https(emulator: EmulatorProcess) -> None:
    account = load_credentials_file(
        emulator.account_files[0], root=os.path.dirname(emulator.account_files[0])
    )
    async with TokenClient(POLICY) as client:
        first = await client.exchange(account, ["r1"], {"user_id": "u7"})
        second = await client.exchange(account, ["r1"])
    claims = jwt.decode(
        first.access_token,
        emulator.admin.public_key_pem(),
        algorithms=["RS256"],
        audience=emulator.url,
    )
    assert claims["sub"] == account.client_id
    assert claims["scope"] == ["r1"]
    assert claims["ctx"] == {"user_id": "u7"}
    assert second.attempts == 1
    stats = emulator.admin.stats()
    assert stats["successes"] == 2
    assert stats["by_client"][account.client_id]["calls"] == 2


@pytest.mark.usefixtures("trust_emulator")
async def test_admin_faults_over_https(emulator: EmulatorProcess) -> None:
    account = parse_credentials(emulator.admin.create_account("fault-test"))
    emulator.admin.set_faults(fail_status=503, fail_count=2, retry_after=0.1)
    async with TokenClient(POLICY) as client:
        token = await client.exchange(account)
    assert token.attempts == 3
    emulator.admin.set_faults(reject=True)
    emulator.admin.set_token_lifetime(600)
    stats = emulator.admin.stats()
    assert (stats["failures"], stats["successes"]) == (2, 1)
    assert stats["faults"]["reject"] is True
    emulator.admin.set_token_lifetime(3600)


async def test_untrusted_ca_fails_without_retry(
    emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    account = load_credentials_file(
        emulator.account_files[1], root=os.path.dirname(emulator.account_files[1])
    )
    async with TokenClient(POLICY) as client:
        with pytest.raises(SkyflowUntrusted, match="TLS certificate verification") as info:
            await client.exchange(account)
    assert "CERTIFICATE_VERIFY_FAILED" in (info.value.detail or "")  # for the log
    assert info.value.attempts == 1
    assert "SKYFLOW_CA_FILE" in str(info.value)  # the fix, not "retry"
    assert emulator.admin.stats()["token_calls"] == 0


async def test_skyflow_ca_file_wins_over_a_global_ssl_cert_file(
    emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host that points SSL_CERT_FILE at the public bundle: the emulator is not in it.
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    account = _load(emulator.account_files[1])
    trust = TrustStore({"SKYFLOW_CA_FILE": emulator.ca_file, "SSL_CERT_FILE": certifi.where()})
    async with TokenClient(POLICY, verify=trust.context()) as client:
        token = await client.exchange(account)
    assert token.attempts == 1
    async with TokenClient(POLICY, verify=TrustStore({}).context()) as client:
        with pytest.raises(SkyflowUntrusted):
            await client.exchange(account)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    emu = EmulatorProcess(state_dir=tmp_path, token_lifetime=120)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH")])
    )
    proc = subprocess.Popen(emu.command(), stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert set(ready) == {"url", "ca_file", "accounts", "pid", "restored"}
        assert ready["pid"] == proc.pid
        assert ready["accounts"] == []
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_process_lifecycle_and_startup_failure(tmp_path: Path) -> None:
    with EmulatorProcess() as emu:
        state_dir = emu.state_dir
        assert state_dir.exists()
        assert emu.pid is not None
    assert emu.returncode == 0
    assert not state_dir.exists()  # an owned temp dir goes away

    started = time.monotonic()
    # 192.0.2.1 (TEST-NET-1) is no local address: binding fails and the child exits
    broken = EmulatorProcess(state_dir=tmp_path, host="192.0.2.1")
    with pytest.raises(EmulatorError, match="exited"):
        broken.start()
    assert time.monotonic() - started < 30
    assert (tmp_path / "emulator.log").read_text()


def _load(path: str) -> ServiceAccount:
    """A credentials file the emulator wrote, read with its own directory as the root."""
    return load_credentials_file(path, root=os.path.dirname(path))
