"""``make demo`` non-interactively: real OpenBao, the emulator, three units, a token each."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")
UNITS = {
    "insurance": "credentials_json",
    "lending": "credentials_file_path",
    "clcm": "credentials_json",
}


def _demo(work_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "skyflow_devtools.demo",
            "--work-dir",
            str(work_dir),
            *list(args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _processes_under(path: Path) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_demo_once_prints_a_token_per_unit_without_secrets(tmp_path: Path) -> None:
    work_dir = tmp_path / "demo"
    done = _demo(work_dir, "--once")
    out = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr

    # Registered by sha256 with the command `install` prints, trusting the emulator's CA.
    assert re.search(
        r"\$ bao write sys/plugins/catalog/secret/skyflow sha256=[0-9a-f]{64} command=skyflow "
        r"version=v0\.1\.0 "
        r"env=SKYFLOW_CA_FILE=\S+/emulator/ca\.pem",
        out,
    )
    for unit, source in UNITS.items():
        assert f"skyflow/{unit}  (config from {source})" in out
        assert f"$ bao secrets enable -path=skyflow/{unit} skyflow" in out
        assert f"token from skyflow/{unit}/creds/producer: sha256:" in out
    # One producer token per unit plus a consumer-analytics token with a ctx map.
    assert out.count("token from ") == 4
    assert out.count("signature  valid (emulator's signing key)") == 4
    assert len(re.findall(r"^    scope      role:\S+$", out, re.MULTILINE)) == 3
    assert "scope      role:lend-analytics role:lend-reporting" in out
    assert 'ctx        {"region": "eu", "user_id": "u-1001"}' in out
    assert len(re.findall(r"expires_in 3[0-9]{3} s, expires_at \S+Z", out)) == 4
    subs = re.findall(r"^    sub        ([0-9a-f]{32})  ", out, re.MULTILINE)
    assert len(subs) == 4
    assert len(set(subs)) == 3  # one service account per unit

    # Never a key, never a raw token.
    assert "PRIVATE KEY" not in out + done.stderr
    assert not JWT.search(out + done.stderr)
    lending_file = work_dir / "credentials" / "skyflow" / "lending" / "service-account.json"
    account = json.loads(lending_file.read_text())
    key_lines = [line for line in account["privateKey"].splitlines() if "-----" not in line]
    assert key_lines
    assert not any(line in out for line in key_lines)

    # How to go on, then a clean stop.
    assert re.search(r"export BAO_ADDR=http://127\.0\.0\.1:\d+ BAO_TOKEN=\S+", out)
    assert "Stopping (--once)" in out
    assert not (work_dir / "demo.json").exists()
    assert _processes_under(work_dir) == []


@pytest.mark.e2e
def test_demo_stop_without_a_running_demo(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--stop")
    assert done.returncode == 0
    assert "No demo is running" in done.stdout
