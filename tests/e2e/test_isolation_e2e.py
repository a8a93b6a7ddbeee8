"""Business units are isolated on the Vault host's disk too (issue 11, item 1).

The server runs with ``SKYFLOW_CREDENTIALS_DIR=D``; the mount at ``P`` may read only files
under ``D/P/``. An admin of the insurance mount tries to configure insurance with the
lending unit's key file: directly, through ``..``, and through a symlink planted in
insurance's own directory. Each is a 400 on ``credentials_file_path`` that says nothing
about the file, insurance keeps no config, and Skyflow is never called with lending's key.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from skyflow_devtools.client import error_text

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = pytest.mark.e2e


def _unit_dir(stack: SkyflowStack, mount: str) -> Path:
    directory = stack.credentials_dir / mount
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_insurance_cannot_use_the_lending_units_key_file(stack: SkyflowStack) -> None:
    client = stack.client()
    suffix = stack.mount("skyflow/probe").rsplit("-", 1)[1]  # a fresh, unique pair of names
    insurance, lending = f"skyflow/insurance-{suffix}", f"skyflow/lending-{suffix}"
    client.enable_secrets(insurance, "skyflow")
    client.enable_secrets(lending, "skyflow")

    lending_account = stack.new_account()
    lending_file = _unit_dir(stack, lending) / "key.json"
    lending_file.write_text(json.dumps(lending_account))
    lending_file.chmod(0o600)
    client.write(f"{lending}/config", {"credentials_file_path": str(lending_file)})
    assert client.read(f"{lending}/config")["data"]["client_id"] == lending_account["clientID"]

    own = _unit_dir(stack, insurance)
    (own / "key.json").symlink_to(lending_file)
    (own / "units").symlink_to(stack.credentials_dir / "skyflow")
    attempts = {
        "direct": str(lending_file),
        "dot-dot": f"{own}/../lending-{suffix}/key.json",
        "symlinked file": str(own / "key.json"),
        "symlinked directory": str(own / "units" / f"lending-{suffix}" / "key.json"),
    }
    calls = stack.admin.stats()["token_calls"]
    messages = {}
    for name, attempt in attempts.items():
        response = client.request(
            "POST", f"{insurance}/config", json={"credentials_file_path": attempt}
        )
        messages[name] = error_text(response, 400)
        assert "credentials_file_path" in messages[name], name
        assert lending_account["clientID"] not in messages[name], name
    assert client.request("GET", f"{insurance}/config").status_code == 404
    assert stack.admin.stats()["token_calls"] == calls  # lending's key was never used
    # the two symlinks read alike: nothing tells the admin what lies behind them
    assert _generic(messages["symlinked file"]) == _generic(messages["symlinked directory"])
    missing = client.request(
        "POST", f"{insurance}/config", json={"credentials_file_path": str(own / "none.json")}
    )
    assert _generic(error_text(missing, 400)) == _generic(messages["symlinked file"])


def test_a_file_in_the_mounts_own_directory_works(stack: SkyflowStack) -> None:
    client = stack.client()
    mount = stack.mount("skyflow/filemode")
    account = stack.new_account()
    key = _unit_dir(stack, mount) / "key.json"
    key.write_text(json.dumps(account))
    client.write(f"{mount}/config", {"credentials_file_path": str(key)})
    client.write(f"{mount}/roles/r", {"role_ids": ["r1"]})
    assert client.read(f"{mount}/creds/r")["data"]["token_type"] == "Bearer"
    assert stack.admin.stats()["requests"][-1]["client_id"] == account["clientID"]


def _generic(message: str) -> str:
    """The message with its log reference blanked out."""
    head, _, tail = message.partition("(reference ")
    return head + tail.partition(";")[2]


def test_a_hostile_error_body_does_not_stall_the_other_mounts(stack: SkyflowStack) -> None:
    """The token endpoint answers one mount's exchanges with a 180 KB error message built to
    make redaction backtrack (it cost 13 s of event-loop CPU per message, freezing every mount
    of the process). Another mount's cached reads keep their normal latency meanwhile."""
    client = stack.client()
    calm = stack.mount("skyflow/calm", roles={"r": ["calm"]})
    hostile = stack.mount("skyflow/hostile", roles={"r": ["hostile"]})
    assert client.request("GET", f"{calm}/creds/r").status_code == 200  # cached from now on

    def cached_read() -> float:
        started = time.monotonic()
        assert client.request("GET", f"{calm}/creds/r").status_code == 200
        return time.monotonic() - started

    baseline = max(cached_read() for _ in range(5))
    stack.admin.set_faults(fail_status=503, error_message="eyJ", error_repeat=60_000)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            attacks = [
                pool.submit(
                    stack.client().request, "GET", f"{hostile}/creds/r", params={"ctx": f"c{i}"}
                )
                for i in range(4)
            ]
            during = [cached_read() for _ in range(10)]
            answers = [attack.result(timeout=60) for attack in attacks]
    finally:
        stack.admin.reset()
    for answer in answers:
        assert "Skyflow token request failed: failing" in error_text(answer, 503)
        assert "eyJ" not in answer.text
    worst = max(during)
    print(f"\ncached read: {baseline * 1000:.1f} ms before, at most {worst * 1000:.1f} ms during")
    assert max(during) < 10 * baseline + 0.5, (baseline, during)
