"""The operator's path on a real OpenBao: ``skyflow-vault-plugin install``, then exactly the
commands it prints; and a tampered install that OpenBao cannot start."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyflow_vault_plugin
from skyflow_devtools.client import BaoError
from skyflow_devtools.openbao import OpenBaoServer, plugin_pids, poll_until
from skyflow_emulator import EmulatorProcess
from skyflow_vault_plugin.install import install

SCRIPT = Path(sys.executable).parent / "skyflow-vault-plugin"
PACKAGE = Path(skyflow_vault_plugin.__file__).resolve().parent


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OpenBaoServer, EmulatorProcess]]:
    work = tmp_path_factory.mktemp("install-e2e")
    with (
        EmulatorProcess(state_dir=work / "emulator") as emulator,
        OpenBaoServer.dev(work / "bao") as bao,
    ):
        yield bao, emulator


def _printed_commands(stdout: str, cli: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith(f"  {cli} ")]


@pytest.mark.e2e
def test_install_then_the_printed_commands_serve_tokens(
    servers: tuple[OpenBaoServer, EmulatorProcess],
) -> None:
    bao, emulator = servers
    done = subprocess.run(
        [
            str(SCRIPT),
            "install",
            "--plugin-dir",
            str(bao.plugin_dir),
            "--env",
            f"SSL_CERT_FILE={emulator.ca_file}",
            "--env",
            "ENV=dev",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    register, enable = _printed_commands(done.stdout, "bao")
    assert register[:3] == ["bao", "write", "sys/plugins/catalog/secret/skyflow"]
    assert enable == ["bao", "secrets", "enable", "-path=skyflow/insurance", "skyflow"]
    for argv in (register, enable):
        ran = bao.cli(*argv[1:])
        assert ran.returncode == 0, ran.stderr

    sha256 = register[3].removeprefix("sha256=")
    entry = bao.client().plugin_info("skyflow", version="v0.1.0")
    assert entry["sha256"] == sha256
    assert entry["command"] == "skyflow"
    assert bao.client().mounts()["skyflow/insurance/"]["running_plugin_version"] == "v0.1.0"

    client = bao.client()
    account = emulator.admin.create_account("install-e2e")
    client.write("skyflow/insurance/config", {"credentials_json": json.dumps(account)})
    client.write("skyflow/insurance/roles/producer", {"role_ids": "r1"})
    data = client.read("skyflow/insurance/creds/producer")["data"]
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] > 3000

    # The plugin process is the launcher, run by the virtualenv's interpreter in isolated mode.
    (pid,) = plugin_pids(bao, bao.plugin_dir / "skyflow")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:3] == [
        sys.executable.encode(),
        b"-IS",
        str(bao.plugin_dir / "skyflow").encode(),
    ]


@pytest.mark.e2e
def test_openbao_cannot_start_a_tampered_install(
    servers: tuple[OpenBaoServer, EmulatorProcess], tmp_path: Path
) -> None:
    bao, emulator = servers
    copy = tmp_path / "src" / "skyflow_vault_plugin"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    installed = install(
        bao.plugin_dir, "skyflow-copy", package_dir=copy, env=[f"SSL_CERT_FILE={emulator.ca_file}"]
    )
    bao.cli(*installed.bao_register_argv()[1:], check=True)
    client = bao.client()
    client.enable_secrets("copy", "skyflow-copy")
    account = emulator.admin.create_account("tamper-e2e")
    client.write("copy/config", {"credentials_json": json.dumps(account)})
    client.write("copy/roles/r", {"role_ids": "r1"})
    assert client.read("copy/creds/r")["data"]["token_type"] == "Bearer"

    # Someone edits an installed module; the running process is not affected, but the next
    # process the server starts (reload, crash, restart, new mount) refuses to run.
    target = copy / "skyflow" / "path_creds.py"
    target.write_text(target.read_text() + "\n# edited after install\n")
    with pytest.raises(BaoError) as reload_failed:
        client.reload_plugin("skyflow-copy")
    with pytest.raises(BaoError) as enable_failed:
        client.enable_secrets("copy2", "skyflow-copy")
    for failed in (reload_failed, enable_failed):
        assert failed.value.status == 400
        assert "Unrecognized remote plugin message" in " ".join(failed.value.errors)

    def refusal_logged() -> str | None:
        text = bao.log_path.read_text(errors="replace")
        return text if "refusing to start" in text else None

    log = poll_until(refusal_logged, timeout=20, message="the plugin's refusal in the log")
    assert f"{target} changed since it was installed" in log
    # Run by hand, the installed file says what is wrong.
    by_hand = subprocess.run(
        [str(installed.path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert by_hand.returncode == 3
    assert f"{target} changed since it was installed" in by_hand.stderr
