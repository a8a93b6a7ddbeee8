"""docs/operations.md's "Rotating a service-account key without downtime", rehearsed against
the emulator through a real OpenBao and the real ``bao`` CLI.

The emulator issues the new key (same clientID, new keyID); the config write takes it; tokens
minted with the old key are dropped and new ones are minted with the new key; revoking the
old key afterwards breaks nothing. Tokens are compared by hash and never printed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = pytest.mark.e2e


def token_hash(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["data"]["access_token"]
    return hashlib.sha256(token.encode()).hexdigest()


def test_rotation_runbook(stack: SkyflowStack, tmp_path: Path) -> None:
    bao = stack.bao.cli
    path = "skyflow/rotation"
    old = stack.new_account()
    (tmp_path / "rotation-sa.json").write_text(json.dumps(old))
    assert bao("secrets", "enable", f"-path={path}", "skyflow").returncode == 0
    done = bao("write", f"{path}/config", f"credentials_json=@{tmp_path / 'rotation-sa.json'}")
    assert done.returncode == 0, done.stderr
    assert bao("write", f"{path}/roles/producer", "role_ids=rot-producer").returncode == 0
    before = token_hash(bao("read", "-format=json", f"{path}/creds/producer"))
    assert token_hash(bao("read", "-format=json", f"{path}/creds/producer")) == before  # cached

    # 1. "In Skyflow, create a new key for the unit's service account" -- here, the emulator.
    new = stack.admin.rotate_key(old["clientID"])
    assert new["clientID"] == old["clientID"]
    assert new["keyID"] != old["keyID"]
    (tmp_path / "rotation-sa-new.json").write_text(json.dumps(new))

    # 2. Write it, then check the key ID -- the runbook's two commands.
    new_file = tmp_path / "rotation-sa-new.json"
    written = bao("write", f"{path}/config", f"credentials_json=@{new_file}")
    assert written.returncode == 0, written.stderr
    assert "WARNING" not in written.stderr  # a rotation is not a switch of account
    shown = bao("read", "-field=key_id", f"{path}/config")
    assert shown.stdout.strip() == new["keyID"]
    # The validation exchange used the new key.
    assert stack.admin.stats()["requests"][-1]["claims"]["key"] == new["keyID"]

    # Tokens minted with the old key are dropped: the next read mints with the new key.
    after = token_hash(bao("read", "-format=json", f"{path}/creds/producer"))
    assert after != before
    last = stack.admin.stats()["requests"][-1]
    assert last["claims"]["key"] == new["keyID"]
    assert last["role_ids"] == ["rot-producer"]

    # 3. Revoke the old key in Skyflow: nothing the mount does needs it any more.
    assert stack.admin.revoke_key(old["clientID"], old["keyID"]) == [new["keyID"]]
    fresh_role = bao("write", f"{path}/roles/fresh", "role_ids=rot-producer", "cache_tokens=false")
    assert fresh_role.returncode == 0, fresh_role.stderr
    token_hash(bao("read", "-format=json", f"{path}/creds/fresh"))
    assert stack.admin.stats()["requests"][-1]["claims"]["key"] == new["keyID"]
