"""The example ACL policies (``examples/policies``) on a real OpenBao with the plugin mounted.

Per business unit: a producer application gets its own tokens and nothing else; a consumer
application likewise for ``consumer-analytics``; an administrator manages config and roles but
gets no tokens. The hvac example application works with a producer token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skyflow_devtools.client import BaoClient
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_emulator import EmulatorProcess
from skyflow_vault_plugin.install import install

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "examples" / "policies"
UNITS = ("insurance", "lending", "clcm")
KINDS = ("producer", "consumer", "admin")


@dataclass
class Stack:
    bao: OpenBaoServer
    emulator: EmulatorProcess
    tokens: dict[tuple[str, str], str]

    def as_(self, unit: str, kind: str) -> BaoClient:
        return self.bao.client(self.tokens[(unit, kind)])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("policies")
    with (
        EmulatorProcess(state_dir=work / "emulator") as emulator,
        OpenBaoServer.dev(work / "bao") as bao,
    ):
        plugin_env = emulator.plugin_env_entries()
        installed = install(bao.plugin_dir, env=plugin_env)
        bao.cli(*installed.bao_register_argv()[1:], check=True)
        root = bao.client()
        for unit in UNITS:
            bao.cli(*installed.enable_argv(f"skyflow/{unit}")[1:], check=True)
            account = emulator.admin.create_account(f"{unit}-sa")
            root.write(f"skyflow/{unit}/config", {"credentials_json": json.dumps(account)})
            root.write(f"skyflow/{unit}/roles/producer", {"role_ids": f"{unit}-writer"})
            root.write(
                f"skyflow/{unit}/roles/consumer-analytics",
                {"role_ids": [f"{unit}-reader", f"{unit}-masked"]},
            )
        for policy in sorted(POLICIES.glob("*.hcl")):
            done = bao.cli("policy", "write", policy.stem, str(policy))
            assert done.returncode == 0, done.stderr
        tokens = {
            (unit, kind): root.create_token([f"{unit}-{kind}"], no_default_policy=True)
            for unit in UNITS
            for kind in KINDS
        }
        yield Stack(bao, emulator, tokens)


def _status(client: BaoClient, method: str, path: str, body: object = None) -> int:
    return client.request(method, path, json=body).status_code


def _allowed(client: BaoClient, *requests: tuple[str, str] | tuple[str, str, object]) -> list[str]:
    """Those of ``requests`` (method, path, optional body) not refused with 403, with their
    status: empty when the policy denies them all."""
    return [
        f"{request[0]} {request[1]}: {status}"
        for request in requests
        if (status := _status(client, *request)) != 403
    ]


def test_every_unit_has_the_three_example_policies() -> None:
    assert sorted(p.name for p in POLICIES.glob("*.hcl")) == sorted(
        f"{unit}-{kind}.hcl" for unit in UNITS for kind in KINDS
    )


@pytest.mark.e2e
@pytest.mark.parametrize("unit", UNITS)
def test_producer_gets_its_creds_and_nothing_else(stack: Stack, unit: str) -> None:
    app = stack.as_(unit, "producer")
    mount = f"skyflow/{unit}"
    assert _status(app, "GET", f"{mount}/creds/producer") == 200
    assert _status(app, "POST", f"{mount}/creds/producer", {"ctx": {"user_id": "u1"}}) == 200
    assert app.read(f"{mount}/creds/producer")["data"]["token_type"] == "Bearer"

    others = [other for other in UNITS if other != unit]
    assert not _allowed(
        app,
        ("GET", f"{mount}/creds/consumer-analytics"),
        ("GET", f"{mount}/config"),
        ("POST", f"{mount}/config", {"description": "x"}),
        ("POST", f"{mount}/roles/producer", {"role_ids": "other"}),
        ("POST", f"{mount}/roles/mine", {"role_ids": "other"}),
        ("LIST", f"{mount}/roles"),
        ("DELETE", f"{mount}/roles/producer"),
        ("GET", f"{mount}/health"),
        *[("GET", f"skyflow/{other}/creds/producer") for other in others],
        *[("GET", f"skyflow/{other}/config") for other in others],
    )


@pytest.mark.e2e
@pytest.mark.parametrize("unit", UNITS)
def test_consumer_gets_consumer_analytics_only(stack: Stack, unit: str) -> None:
    app = stack.as_(unit, "consumer")
    mount = f"skyflow/{unit}"
    assert _status(app, "GET", f"{mount}/creds/consumer-analytics") == 200
    other = UNITS[(UNITS.index(unit) + 1) % len(UNITS)]
    assert not _allowed(
        app,
        ("GET", f"{mount}/creds/producer"),
        ("GET", f"{mount}/config"),
        ("POST", f"{mount}/roles/consumer-analytics", {"role_ids": "x"}),
        ("GET", f"skyflow/{other}/creds/consumer-analytics"),
    )


@pytest.mark.e2e
@pytest.mark.parametrize("unit", UNITS)
def test_admin_manages_config_and_roles_but_gets_no_tokens(stack: Stack, unit: str) -> None:
    admin = stack.as_(unit, "admin")
    mount = f"skyflow/{unit}"
    config = admin.read(f"{mount}/config")["data"]
    assert "credentials_json" not in config
    assert admin.list(f"{mount}/roles") == ["consumer-analytics", "producer"]
    admin.write(f"{mount}/roles/temporary", {"role_ids": "t1"})
    assert admin.read(f"{mount}/roles/temporary")["data"]["role_ids"] == ["t1"]
    admin.delete(f"{mount}/roles/temporary")
    admin.write(f"{mount}/config", {"description": f"{unit} (edited by its admin)"})
    assert _status(admin, "GET", f"{mount}/health") == 200

    other = UNITS[(UNITS.index(unit) + 1) % len(UNITS)]
    assert not _allowed(
        admin,
        ("GET", f"{mount}/creds/producer"),
        ("GET", f"{mount}/creds/consumer-analytics"),
        ("GET", f"skyflow/{other}/config"),
        ("POST", f"skyflow/{other}/roles/x", {"role_ids": "x"}),
        ("GET", "sys/mounts"),
    )


@pytest.mark.e2e
def test_the_hvac_example_app_works_with_a_producer_token(stack: Stack) -> None:
    def app(unit: str, kind: str, role: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "BAO_ADDR": stack.bao.addr,
            "BAO_TOKEN": stack.tokens[(unit, kind)],
        }
        env.pop("VAULT_ADDR", None)
        env.pop("VAULT_TOKEN", None)
        return subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / "app_hvac.py"),
                "--mount",
                f"skyflow/{unit}",
                "--role",
                role,
                "--once",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    allowed = app("insurance", "producer", "producer")
    assert allowed.returncode == 0, allowed.stderr
    assert "token sha256:" in allowed.stdout
    assert "scope=['insurance-writer']" in allowed.stdout
    assert "eyJ" not in allowed.stdout  # it prints a fingerprint, never the token
    denied = app("insurance", "producer", "consumer-analytics")
    assert denied.returncode == 1
    assert "permission denied" in denied.stderr
