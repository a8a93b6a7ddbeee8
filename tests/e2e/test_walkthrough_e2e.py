"""docs/walkthrough.md, executed: every ``sh`` block, in order and exactly as printed.

A real OpenBao on Raft (started with a config equivalent to the page's, then left
uninitialised and sealed for the page's own ``bao operator init``/``unseal``), the Skyflow
emulator over HTTPS, and a fresh virtualenv that the page's commands create and install the
plugin into. The test sets only the variables the page documents (``BAO_ADDR``,
``PLUGIN_DIR``, ``PREFIX``, ``PLUGIN_SOURCE``, ``SKYFLOW_CA_FILE``,
``SKYFLOW_ALLOWED_TOKEN_HOSTS``, ``INSURANCE_SA``, ``LENDING_SA``); the server itself does
not trust the emulator's CA, so the page's registration has to carry it. Tokens are
decoded, never printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from skyflow_devtools.openbao import OpenBaoServer, bao_binary
from skyflow_emulator.process import EmulatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WALKTHROUGH = REPO / "docs" / "walkthrough.md"
DOCUMENTED = {
    "BAO_ADDR",
    "PLUGIN_DIR",
    "PREFIX",
    "PLUGIN_SOURCE",
    "SKYFLOW_CA_FILE",
    "SKYFLOW_ALLOWED_TOKEN_HOSTS",
    "INSURANCE_SA",
    "LENDING_SA",
}
# Values the page's commands put into variables, handed back by the test's epilogue.
CAPTURED = ("SKYFLOW_TOKEN", "SKYFLOW_CTX_TOKEN", "LENDING_SKYFLOW_TOKEN")


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def documented_variables(text: str) -> set[str]:
    """The names in the first column of the "What you need" variables table."""
    section = text.split("## What you need", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`(\w+)`", line.split("|")[1]))
    return names


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[OpenBaoServer, EmulatorProcess]]:
    assert shutil.which("jq"), "the walkthrough uses jq; install it"
    emulator = EmulatorProcess(accounts=2, state_dir=tmp_path / "emulator").start()
    server = OpenBaoServer.raft(tmp_path / "bao", log_level="info")  # the server's default
    try:
        server.start(ready="listening")
        yield server, emulator
    finally:
        server.close()
        emulator.stop()


def test_the_walkthrough_runs_as_printed(
    world: tuple[OpenBaoServer, EmulatorProcess], tmp_path: Path
) -> None:
    server, emulator = world
    text = WALKTHROUGH.read_text()
    blocks = sh_blocks(text)
    assert len(blocks) >= 9
    assert documented_variables(text) == DOCUMENTED

    work = tmp_path / "operator"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    env.pop("SSL_CERT_FILE", None)
    env["PATH"] = f"{bao_binary().parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "BAO_ADDR": server.addr,
            "PLUGIN_DIR": str(server.plugin_dir),
            "PREFIX": str(tmp_path / "opt" / "skyflow-vault-plugin"),
            "PLUGIN_SOURCE": str(REPO),
            "SKYFLOW_CA_FILE": emulator.ca_file,
            "SKYFLOW_ALLOWED_TOKEN_HOSTS": emulator.plugin_env()["SKYFLOW_ALLOWED_TOKEN_HOSTS"],
            "INSURANCE_SA": emulator.account_files[0],
            "LENDING_SA": emulator.account_files[1],
        }
    )
    script = ["set -euo pipefail"]
    for number, block in enumerate(blocks, 1):
        script.append(f"echo '=== walkthrough block {number}' >&2")
        script.append(block)
    captured = work / "captured.json"
    fields = ", ".join(f'"{name}": env.get("{name}")' for name in CAPTURED)
    script.append(
        f"""python3 -c 'import json, os; env = os.environ; """
        f"""json.dump({{{fields}}}, open("{captured}", "w"))'"""
    )
    ran = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    last_block = re.findall(r"=== walkthrough block (\d+)", ran.stderr)
    assert ran.returncode == 0, (
        f"block {last_block[-1] if last_block else '?'} failed:\n{ran.stderr[-3000:]}"
    )

    # Step 3 really installed a fresh virtualenv, and step 4 registered its launcher.
    assert (tmp_path / "opt" / "skyflow-vault-plugin" / "bin" / "skyflow-vault-plugin").exists()
    assert "skyflow/insurance/" in ran.stdout
    assert "skyflow/lending/" in ran.stdout
    # Step 8: the tokens carry the unit's account, the role's IDs and the map ctx.
    tokens = json.loads(captured.read_text())
    insurance = json.loads(Path(emulator.account_files[0]).read_text())["clientID"]
    lending = json.loads(Path(emulator.account_files[1]).read_text())["clientID"]
    plain = claims(tokens["SKYFLOW_TOKEN"])
    assert plain["sub"] == insurance
    assert plain["scope"] == ["ins-producer"]
    assert "ctx" not in plain
    assert claims(tokens["SKYFLOW_CTX_TOKEN"])["ctx"] == {"user_id": "u1"}
    assert claims(tokens["LENDING_SKYFLOW_TOKEN"])["sub"] == lending
    # The refusals of step 8 and the health status of step 9.
    assert ran.stdout.count("refused, as it should be") == 2
    assert ran.stderr.count("permission denied") == 2
    assert re.search(r"^200$", ran.stdout, re.MULTILINE)
    assert re.search(r"^healthy\s+true$", ran.stdout, re.MULTILINE)
    # The server ran at its default log level (info), and the plugin's INFO audit lines are
    # in its log (docs/operations.md, Logs).
    audit = [line for line in server.log_path.read_text().splitlines() if "token request" in line]
    assert audit
    assert all("[INFO]" in line for line in audit)
    # No Skyflow token reached the output.
    for token in tokens.values():
        assert token not in ran.stdout + ran.stderr


def claims(token: str | None) -> dict[str, Any]:
    assert token, "the walkthrough did not set this token"
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded
