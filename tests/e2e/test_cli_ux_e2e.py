"""What an operator or an application sees through the real ``bao`` CLI (issue 15).

Every command runs the ``bao`` binary as a subprocess with ``BAO_ADDR``/``BAO_TOKEN`` set,
against a real OpenBao with the plugin installed and the emulator behind it. Access tokens
are decoded (the emulator's JWTs, without verifying) and never printed: only their claims
reach assertions.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from skyflow_devtools.openbao import bao_binary, controlled_environment

if TYPE_CHECKING:
    from conftest import SkyflowStack, UnitMount

pytestmark = pytest.mark.e2e


def bao(stack: SkyflowStack, *args: str) -> subprocess.CompletedProcess[str]:
    return stack.bao.cli(*args)


def bao_in(cwd: Path, stack: SkyflowStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``bao`` run from ``cwd`` (for relative file names), against the stack's server."""
    env = controlled_environment()
    env.update(stack.bao.env)
    return subprocess.run(
        [str(bao_binary()), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def minted_claims(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The claims of the token a ``bao ... -format=json`` creds command printed."""
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["data"]["access_token"]
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


# -- a map ctx from the CLI --------------------------------------------------------------------


def test_cli_map_ctx_reaches_the_token_as_a_map(stack: SkyflowStack, unit_mount: UnitMount) -> None:
    path = unit_mount(roles={"r": ["ins-reader"]})
    written = bao(stack, "write", "-format=json", f"{path}/creds/r", 'ctx={"user_id":"u1"}')
    assert minted_claims(written)["ctx"] == {"user_id": "u1"}
    # GET with the ctx in the query string: the same map.
    read = bao(stack, "read", "-format=json", f"{path}/creds/r", 'ctx={"user_id":"u2"}')
    assert minted_claims(read)["ctx"] == {"user_id": "u2"}
    # A plain string stays a string.
    plain = bao(stack, "write", "-format=json", f"{path}/creds/r", "ctx=u3")
    assert minted_claims(plain)["ctx"] == "u3"


def test_cli_ctx_that_lost_its_quotes_is_a_400_showing_the_right_command(
    stack: SkyflowStack, unit_mount: UnitMount
) -> None:
    path = unit_mount(roles={"r": ["ins-reader"]})
    # `ctx={"user_id":"u1"}` typed without single quotes: the shell drops the double quotes.
    refused = bao(stack, "write", f"{path}/creds/r", "ctx={user_id:u1}")
    assert refused.returncode == 2
    assert "Code: 400" in refused.stderr
    assert "invalid value for field 'ctx': starts with '{' but is not a valid JSON" in (
        refused.stderr
    )
    assert """ctx='{"key":"value"}'""" in refused.stderr


def test_restricted_role_string_ctx_error_says_how_to_send_a_map(
    stack: SkyflowStack, unit_mount: UnitMount
) -> None:
    path = unit_mount(roles={"r": ["ins-reader"]})
    done = bao(
        stack, "write", f"{path}/roles/r", "role_ids=ins-reader", "ctx_mode=restricted",
        "allowed_ctx_keys=user_id",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    refused = bao(stack, "write", f"{path}/creds/r", "ctx=u1")
    assert refused.returncode == 2
    assert "this role accepts ctx only as a map of keys" in refused.stderr
    assert 'bao write <mount>/creds/<role> ctx=\'{"user_id":"u1"}\'' in refused.stderr
    assert 'curl -X POST -d \'{"ctx": {"user_id": "u1"}}\'' in refused.stderr
    # and the form it shows works
    shown = bao(stack, "write", "-format=json", f"{path}/creds/r", 'ctx={"user_id":"u1"}')
    assert minted_claims(shown)["ctx"] == {"user_id": "u1"}


def test_curl_style_json_body_ctx(stack: SkyflowStack, unit_mount: UnitMount) -> None:
    path = unit_mount(roles={"r": ["ins-reader"]})
    answer = httpx.post(
        f"{stack.bao.addr}/v1/{path}/creds/r",
        headers={"X-Vault-Token": stack.bao.root_token},
        content=b'{"ctx": {"user_id": "u1"}}',
    )
    assert answer.status_code == 200
    token = answer.json()["data"]["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["ctx"] == {"user_id": "u1"}


# -- error texts that name the fix ------------------------------------------------------------


def test_misspelt_fields_get_did_you_mean(
    stack: SkyflowStack, unit_mount: UnitMount, account_file: Path
) -> None:
    path = unit_mount()
    role = bao(stack, "write", f"{path}/roles/r", "role_id=ins-reader")
    assert role.returncode == 2
    assert "invalid value for field 'role_id': unknown field for this path; " in role.stderr
    assert "did you mean 'role_ids'?" in role.stderr

    config = bao(stack, "write", f"{path}/config", f"credential_json=@{account_file}")
    assert config.returncode == 2
    assert "did you mean 'credentials_json'?" in config.stderr
    assert "PRIVATE KEY" not in config.stderr + config.stdout


def test_credentials_json_file_name_without_at_gets_the_hint(
    stack: SkyflowStack, unit_mount: UnitMount, tmp_path: Path
) -> None:
    path = unit_mount()
    account = tmp_path / "insurance-sa.json"
    account.write_text(json.dumps(stack.new_account()))
    refused = bao_in(
        tmp_path, stack, "write", f"{path}/config", "credentials_json=insurance-sa.json"
    )
    assert refused.returncode == 2
    assert "'insurance-sa.json' looks like a file name" in refused.stderr
    assert "credentials_json=@insurance-sa.json" in refused.stderr
    # The hinted command works from the same directory.
    fixed = bao_in(
        tmp_path, stack, "write", f"{path}/config", "credentials_json=@insurance-sa.json"
    )
    assert fixed.returncode == 0, fixed.stderr


def test_rejected_credentials_say_so_once(
    stack: SkyflowStack, unit_mount: UnitMount, account_file: Path
) -> None:
    path = unit_mount()
    stack.admin.set_faults(reject=True)
    try:
        refused = bao(stack, "write", f"{path}/config", f"credentials_json=@{account_file}")
    finally:
        stack.admin.reset()
    assert refused.returncode == 2
    assert refused.stderr.count("rejected") == 1, refused.stderr
    assert "Skyflow token request failed: rejected (HTTP 401" in refused.stderr


def test_switching_client_warns_in_the_cli(
    stack: SkyflowStack, unit_mount: UnitMount, tmp_path: Path
) -> None:
    path = unit_mount()
    other = stack.new_account()
    account = tmp_path / "other.json"
    account.write_text(json.dumps(other))
    switched = bao(stack, "write", f"{path}/config", f"credentials_json=@{account}")
    assert switched.returncode == 0, switched.stderr
    # The CLI prints warnings on stderr, wrapped to the terminal width.
    shown = " ".join(switched.stderr.split())
    assert "WARNING" in shown
    assert f"to {other['clientID']}: this mount now mints tokens for a different" in shown


# -- health for people and for load balancers -------------------------------------------------


def test_cli_shows_why_a_mount_is_unhealthy(stack: SkyflowStack) -> None:
    path = "skyflow/unconfigured-health"
    stack.client().enable_secrets(path, "skyflow")
    reason = "* config: not configured: write the service account to config"
    for args in ((), ("-format=json",)):
        shown = bao(stack, "read", *args, f"{path}/health")
        assert shown.returncode == 2
        assert "Code: 503" in shown.stderr
        assert reason in shown.stderr
    # With a 2xx unhealthy_code the CLI shows the whole body, the reason as a warning.
    full = bao(stack, "read", "-format=json", f"{path}/health", "unhealthy_code=200")
    assert full.returncode == 0, full.stderr
    body = json.loads(full.stdout)
    assert body["data"]["healthy"] is False
    assert body["data"]["checks"]["config"]["ok"] is False
    assert body["warnings"] == [reason[2:]]


def test_health_status_for_load_balancers(stack: SkyflowStack, unit_mount: UnitMount) -> None:
    path = "skyflow/unconfigured-lb"
    stack.client().enable_secrets(path, "skyflow")
    url = f"{stack.bao.addr}/v1/{path}/health"
    headers = {"X-Vault-Token": stack.bao.root_token}
    down = httpx.get(url, headers=headers)
    assert down.status_code == 503
    assert down.json()["errors"] == ["config: not configured: write the service account to config"]
    assert down.json()["data"]["healthy"] is False
    assert httpx.get(url, headers=headers, params={"unhealthy_code": "429"}).status_code == 429
    assert httpx.get(url, headers=headers, params={"unhealthy_code": "200"}).status_code == 200

    configured = unit_mount()  # its config write left a probe token behind
    up = httpx.get(
        f"{stack.bao.addr}/v1/{configured}/health",
        headers=headers,
        params={"unhealthy_code": "200"},
    )
    assert up.status_code == 200
    skyflow = up.json()["data"]["checks"]["skyflow"]
    assert skyflow["cached"] is True
    assert 0 <= skyflow["age_seconds"] < 60
    assert "errors" not in up.json()


# -- what error bodies really look like (docs/api.md, Errors) ----------------------------------


def test_error_bodies_as_documented(stack: SkyflowStack, unit_mount: UnitMount) -> None:
    path = unit_mount(roles={"r": ["ins-reader"]})
    headers = {"X-Vault-Token": stack.bao.root_token}
    base = f"{stack.bao.addr}/v1/{path}"
    # 400s arrive as the plain message.
    bad = httpx.post(f"{base}/roles/r", headers=headers, json={"role_id": "x"})
    assert bad.status_code == 400
    assert bad.json()["errors"] == [
        "invalid value for field 'role_id': unknown field for this path; did you mean 'role_ids'?"
    ]
    # Other statuses arrive wrapped by the server, as api.md shows.
    missing = httpx.get(f"{base}/roles/nope", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["errors"] == []  # a read of a missing object: no message at all
    stack.admin.set_faults(fail_status=503)
    try:
        down = httpx.post(f"{base}/creds/r", headers=headers, json={"ctx": "fresh-ctx"})
    finally:
        stack.admin.reset()
    assert down.status_code == 503
    (message,) = down.json()["errors"]
    assert message.startswith("1 error occurred:\n\t* Skyflow token request failed: failing")
    assert message.endswith("\n\n")
    # `bao read` turns any 404 into "No value found"; an unknown role is a 400 it prints.
    read = bao(stack, "read", f"{path}/roles/nope")
    assert read.returncode == 2
    assert read.stderr == f"No value found at {path}/roles/nope\n"
    unknown = bao(stack, "read", f"{path}/creds/nope")
    assert unknown.returncode == 2
    assert "* role 'nope' does not exist" in unknown.stderr
