"""ACL boundaries on a real OpenBao: an application token with a producer policy for one business
unit reads its own creds and nothing else.

The policy grants ``read`` on ``<unit>/creds/producer`` only. Every other request the token
makes -- the config, roles (read, write, list, delete), another role's creds, another unit's
creds, a POST on its own creds, health -- must answer 403, leave what is stored unchanged and
never reach Skyflow. The example policies shipped for operators (``examples/policies/``) are
applied the same way when they exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from .conftest import Stack

pytestmark = pytest.mark.e2e

EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "examples" / "policies"


@dataclass(frozen=True)
class Units:
    """Two business units and the tokens of the application under test."""

    unit: str  # the producer's own unit
    other: str  # another unit
    producer_token: str  # read on <unit>/creds/producer only
    health_token: str  # the same, plus read on <unit>/health
    client_id: str  # the unit's service account


def producer_policy(mount: str) -> str:
    return f'path "{mount}/creds/producer" {{\n  capabilities = ["read"]\n}}\n'


@pytest.fixture(scope="module")
def units(stack: Stack) -> Units:
    account = stack.new_account()
    unit = stack.mount(
        "skyflow/insurance",
        credentials=account,
        roles={"producer": ["insurance-producer"], "consumer": ["insurance-consumer"]},
    )
    other = stack.mount("skyflow/lending", roles={"producer": ["lending-producer"]})
    root = stack.client()
    root.write_policy("insurance-producer", producer_policy(unit))
    root.write_policy("insurance-health", f'path "{unit}/health" {{ capabilities = ["read"] }}')
    return Units(
        unit=unit,
        other=other,
        producer_token=root.create_token(["insurance-producer"]),
        health_token=root.create_token(["insurance-producer", "insurance-health"]),
        client_id=account["clientID"],
    )


def stored_state(stack: Stack, *mounts: str) -> dict[str, Any]:
    """Everything a denied request could have changed, as root sees it."""
    root = stack.client()
    state: dict[str, Any] = {}
    for mount in mounts:
        state[f"{mount}/config"] = root.read(f"{mount}/config")["data"]
        for name in root.list(f"{mount}/roles"):
            state[f"{mount}/roles/{name}"] = root.read(f"{mount}/roles/{name}")["data"]
    return state


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def test_producer_reads_its_own_creds(stack: Stack, units: Units) -> None:
    response = stack.client(units.producer_token).request("GET", f"{units.unit}/creds/producer")
    assert response.status_code == 200, response.text
    token = response.json()["data"]["access_token"]
    verified = jwt.decode(
        token, stack.admin.public_key_pem(), algorithms=["RS256"], audience=stack.emulator.url
    )
    assert verified["sub"] == units.client_id
    assert verified["scope"] == ["insurance-producer"]


def test_a_name_parameter_cannot_switch_the_role(stack: Stack, units: Units) -> None:
    """The ACL is checked on the path; the role comes from the path too, never the query."""
    response = stack.client(units.producer_token).request(
        "GET", f"{units.unit}/creds/producer", params={"name": "consumer"}
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert claims(response.json()["data"]["access_token"])["scope"] == ["insurance-producer"]


# (label, method, path relative to a mount or "<other>/...", body)
DENIED: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("config read", "GET", "config", None),
    ("config write", "POST", "config", {"description": "hijacked"}),
    ("config rotate", "POST", "config", {"credentials_json": "{}"}),
    ("config delete", "DELETE", "config", None),
    ("role read", "GET", "roles/producer", None),
    ("role write", "POST", "roles/producer", {"role_ids": ["admin-role"]}),
    ("role create", "POST", "roles/escalate", {"role_ids": ["admin-role"]}),
    ("role delete", "DELETE", "roles/producer", None),
    ("role list", "LIST", "roles", None),
    ("role list by GET", "GET", "roles", {"list": "true"}),
    ("other role's creds", "GET", "creds/consumer", None),
    ("other role's creds by POST", "POST", "creds/consumer", {}),
    ("own creds by POST (update not granted)", "POST", "creds/producer", {"ctx": "x"}),
    ("own creds, trailing slash", "GET", "creds/producer/", None),
    ("own creds, other case", "GET", "creds/PRODUCER", None),
    ("health not granted", "GET", "health", None),
    ("other unit's creds", "GET", "<other>/creds/producer", None),
    ("other unit's config", "GET", "<other>/config", None),
    ("other unit's roles", "LIST", "<other>/roles", None),
    ("mount table", "GET", "sys/mounts", None),
    ("disable the mount", "DELETE", "sys/mounts/<unit>", None),
    ("reload the plugin", "PUT", "sys/plugins/reload/backend", {"plugin": "skyflow"}),
]


def _absolute(units: Units, path: str) -> str:
    if path.startswith("<other>/"):
        return f"{units.other}/{path.removeprefix('<other>/')}"
    if path.startswith("sys/"):
        return path.replace("<unit>", units.unit)
    return f"{units.unit}/{path}"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [case[1:] for case in DENIED],
    ids=[case[0] for case in DENIED],
)
def test_everything_else_is_denied(
    stack: Stack, units: Units, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = stored_state(stack, units.unit, units.other)
    calls_before = stack.admin.stats()["token_calls"]
    target = _absolute(units, path)
    client = stack.client(units.producer_token)
    if method == "GET" and body is not None:
        response = client.request(method, target, params=body)
    else:
        response = client.request(method, target, json=body)
    assert response.status_code == 403, f"{method} {target}: {response.status_code}"
    assert "permission denied" in response.text
    assert stored_state(stack, units.unit, units.other) == before
    assert stack.admin.stats()["token_calls"] == calls_before, "a denied request reached Skyflow"


def test_health_when_granted(stack: Stack, units: Units) -> None:
    response = stack.client(units.health_token).request("GET", f"{units.unit}/health")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["healthy"] is True


def test_root_still_manages_the_unit(stack: Stack, units: Units) -> None:
    """The denials above come from the policy, not from a broken mount."""
    root = stack.client()
    assert root.read(f"{units.unit}/config")["data"]["client_id"] == units.client_id
    assert sorted(root.list(f"{units.unit}/roles")) == ["consumer", "producer"]


# -------------------------------------------------------------------- the shipped examples


_PATH_BLOCK = re.compile(r'path\s+"([^"]+)"\s*\{[^}]*capabilities\s*=\s*\[([^\]]*)\]', re.S)


@dataclass(frozen=True)
class Example:
    """One shipped policy: what it grants on creds paths, and which configs it manages."""

    name: str
    text: str
    creds: tuple[tuple[str, str, frozenset[str]], ...]  # (mount, role, capabilities)
    configs: tuple[str, ...]  # mounts whose config it may write


def _examples() -> list[Example]:
    found = []
    for file in sorted(EXAMPLE_POLICIES.glob("*.hcl")) if EXAMPLE_POLICIES.is_dir() else []:
        text = file.read_text()
        creds, configs = [], []
        for path, caps in _PATH_BLOCK.findall(text):
            capabilities = frozenset(c.strip().strip('"') for c in caps.split(",") if c.strip())
            if "/creds/" in path and not any(ch in path for ch in "*+"):
                mount, role = path.split("/creds/", 1)
                creds.append((mount, role, capabilities))
            elif path.endswith("/config") and capabilities & {"create", "update"}:
                configs.append(path.removesuffix("/config"))
        found.append(Example(file.stem, text, tuple(creds), tuple(configs)))
    return found


def test_example_policies_hold_on_a_real_server(stack: Stack) -> None:
    """The shipped policies (examples/policies), applied to a real server with every unit
    they name mounted: each application policy reads its own creds and is denied every
    other unit's and role's creds, the config and the roles; each admin policy manages its
    own unit only and gets no tokens."""
    examples = _examples()
    if not examples:
        pytest.skip("examples/policies/ is not shipped yet (operator-experience issue)")
    root = stack.client()
    mounts = {m for e in examples for m, _, _ in e.creds} | {m for e in examples for m in e.configs}
    for mount in sorted(mounts):
        if f"{mount}/" not in root.mounts():
            root.enable_secrets(mount, "skyflow")
            root.write(f"{mount}/config", {"credentials_json": json.dumps(stack.new_account())})
    every_grant = {(m, r) for e in examples for m, r, _ in e.creds}
    for mount, role in sorted(every_grant):
        root.write(f"{mount}/roles/{role}", {"role_ids": [f"{role}-id"]})

    problems: list[str] = []

    def expect(example: Example, method: str, path: str, wanted: int, body: Any = None) -> None:
        got = client.request(method, path, json=body).status_code
        if got != wanted:
            problems.append(f"{example.name}: {method} {path} gave {got}, expected {wanted}")

    for example in examples:
        root.write_policy(f"example-{example.name}", example.text)
        client = stack.client(root.create_token([f"example-{example.name}"]))
        own = {(m, r) for m, r, _ in example.creds}
        for mount, role, caps in example.creds:
            expect(example, "GET", f"{mount}/creds/{role}", 200 if "read" in caps else 403)
            post = 200 if "update" in caps else 403
            expect(example, "POST", f"{mount}/creds/{role}", post, {"ctx": {"user": "u1"}})
        for mount, role in sorted(every_grant - own):
            expect(example, "GET", f"{mount}/creds/{role}", 403)
        for mount in sorted(mounts):
            managed = mount in example.configs
            expect(example, "GET", f"{mount}/config", 200 if managed else 403)
            expect(example, "LIST", f"{mount}/roles", 200 if managed else 403)
            expect(
                example,
                "POST",
                f"{mount}/roles/probe",
                200 if managed else 403,
                {"role_ids": ["probe-id"]},
            )
            if not managed:
                expect(example, "DELETE", f"{mount}/config", 403)
        for mount in example.configs:
            for m, r in sorted(every_grant):
                if m == mount:
                    expect(example, "GET", f"{m}/creds/{r}", 403 if (m, r) not in own else 200)
    assert not problems, "\n".join(problems)
    assert any(e.creds for e in examples), "no example policy grants any creds path"
