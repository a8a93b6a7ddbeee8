"""The Skyflow engine inside a real OpenBao, against the Skyflow emulator over HTTPS.

Issue 3's "done when": three business-unit mounts (``skyflow/insurance`` configured with
``credentials_json``, ``skyflow/lending`` with ``credentials_file_path``, ``skyflow/clcm``),
each with a ``producer`` role (one Skyflow role ID) and a ``consumer-analytics`` role (two).
The tests show that tokens carry the mount's own service account, the role's IDs and the
ctx; that mounts are isolated; that a config read never shows the key; every error case
with its code; deleting a role and the config; health; and path-help.

Secrets hygiene: access tokens are only ever compared through their SHA-256 and the raw
token is never bound to a name used in an assertion (pytest would print it), and private
keys are checked for by booleans and counts, never by an assertion that could echo a body.
"""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from skyflow_devtools.client import BaoClient, error_text
from skyflow_emulator.process import EmulatorAdmin
from tests.issued import issued, read_creds

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = pytest.mark.e2e

PLUGIN = "skyflow"
TOKEN_LIFETIME = 3600


# -- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A configured business-unit mount."""

    name: str
    path: str
    client_id: str
    role_ids: dict[str, list[str]]
    credentials: dict[str, str] = field(repr=False)


def rfc3339(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text)
    assert moment.tzinfo is not None, f"{text!r} has no time zone"
    return moment


def key_material_in(text: str, credentials: dict[str, str]) -> tuple[bool, int]:
    """Whether ``text`` has a PEM marker, and how many of the key's body lines it holds."""
    lines = [
        line.strip()
        for line in credentials["privateKey"].splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    return "PRIVATE KEY" in text, sum(1 for line in lines if line in text)


def health_body(response: httpx.Response) -> dict[str, Any]:
    """The health document (under ``data`` both for 200 and for the raw 503 body)."""
    body = response.json()
    data: dict[str, Any] = body.get("data", body)
    return data


def enable(stack: SkyflowStack, prefix: str) -> str:
    """A fresh, unconfigured mount of the plugin."""
    path = f"{prefix}-{secrets.token_hex(3)}"
    stack.client().enable_secrets(path, PLUGIN)
    return path


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def public_key(stack: SkyflowStack) -> str:
    return stack.admin.public_key_pem()


@pytest.fixture
def client(stack: SkyflowStack) -> BaoClient:
    return stack.client()


@pytest.fixture
def unit_path(stack: SkyflowStack) -> str:
    """One configured mount with a ``producer`` role, for the input-validation cases."""
    return stack.mount("skyflow/clcm", roles={"producer": ["clcm-producer"]})


@pytest.fixture
def units(stack: SkyflowStack, tmp_path: Path) -> dict[str, Unit]:
    """The three business units, each with its own account and the two roles."""
    client = stack.client()
    made: dict[str, Unit] = {}
    for name in ("insurance", "lending", "clcm"):
        credentials = stack.new_account()
        path = enable(stack, f"skyflow/{name}")
        if name == "lending":
            # the plugin reads files only under SKYFLOW_CREDENTIALS_DIR/<mount path>/
            creds_file = stack.credentials_dir / path / f"{name}-service-account.json"
            creds_file.parent.mkdir(parents=True, exist_ok=True)
            creds_file.write_text(json.dumps(credentials, indent=2))
            creds_file.chmod(0o600)
            client.write(f"{path}/config", {"credentials_file_path": str(creds_file.resolve())})
        else:
            client.write(f"{path}/config", {"credentials_json": json.dumps(credentials)})
        role_ids = {
            "producer": [f"{name}-producer"],
            "consumer-analytics": [f"{name}-analytics", f"{name}-reporting"],
        }
        for role, ids in role_ids.items():
            client.write(f"{path}/roles/{role}", {"role_ids": ids})
        made[name] = Unit(name, path, credentials["clientID"], role_ids, credentials)
    return made


# -- tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "ctx"),
    [
        ("GET", "session-42"),
        ("POST", {"user_id": "u-1001", "region": "eu", "purpose": "fraud_review"}),
    ],
    ids=["string-ctx-in-query", "map-ctx-in-body"],
)
def test_each_unit_issues_tokens_for_its_own_account_roles_and_ctx(
    stack: SkyflowStack,
    public_key: str,
    client: BaoClient,
    units: dict[str, Unit],
    method: str,
    ctx: Any,
) -> None:
    subjects: set[str] = set()
    for unit in units.values():
        for role, role_ids in unit.role_ids.items():
            got = issued(stack, public_key, read_creds(client, unit.path, role, ctx, method=method))
            assert got.response_keys == ["access_token", "expires_at", "expires_in", "token_type"]
            assert got.token_type == "Bearer"
            assert got.claims["sub"] == unit.client_id
            assert got.claims["scope"] == role_ids
            assert got.claims["ctx"] == ctx
            assert isinstance(got.expires_in, int)
            assert TOKEN_LIFETIME - 10 <= got.expires_in <= TOKEN_LIFETIME
            expires_at = rfc3339(got.expires_at).timestamp()
            assert abs(expires_at - got.claims["exp"]) <= 2
            subjects.add(got.claims["sub"])
    assert len(subjects) == 3


def test_the_emulator_saw_the_request_as_skyflow_would(
    stack: SkyflowStack, public_key: str, client: BaoClient, units: dict[str, Unit]
) -> None:
    unit = units["clcm"]
    ctx = {"user_id": "u-7"}
    issued(
        stack, public_key, read_creds(client, unit.path, "consumer-analytics", ctx, method="PUT")
    )
    recorded = [r for r in stack.admin.stats()["requests"] if r["client_id"] == unit.client_id]
    last = recorded[-1]
    assert last["scope"] == "role:clcm-analytics role:clcm-reporting"
    assert last["ctx"] == ctx
    assert last["claims"]["iss"] == last["claims"]["sub"] == unit.client_id
    assert last["claims"]["key"] == unit.credentials["keyID"]
    assert last["claims"]["aud"] == unit.credentials["tokenURI"]
    assert last["header"]["alg"] == "RS256"


def test_roles_are_listed_and_read_back(client: BaoClient, units: dict[str, Unit]) -> None:
    unit = units["insurance"]
    assert sorted(client.list(f"{unit.path}/roles")) == ["consumer-analytics", "producer"]
    role = client.read(f"{unit.path}/roles/consumer-analytics")["data"]
    assert role["name"] == "consumer-analytics"
    assert role["role_ids"] == ["insurance-analytics", "insurance-reporting"]
    assert rfc3339(role["created_at"]) <= rfc3339(role["updated_at"])


def test_lending_uses_its_credentials_file(client: BaoClient, units: dict[str, Unit]) -> None:
    config = client.read(f"{units['lending'].path}/config")["data"]
    assert config["credentials_type"] == "file_path"
    assert Path(config["credentials_file_path"]).is_absolute()
    assert config["client_id"] == units["lending"].client_id
    assert client.read(f"{units['insurance'].path}/config")["data"]["credentials_type"] == "json"


def test_mounts_are_isolated(
    stack: SkyflowStack, public_key: str, client: BaoClient, units: dict[str, Unit]
) -> None:
    insurance, lending, clcm = units["insurance"], units["lending"], units["clcm"]
    client.write(f"{insurance.path}/roles/claims-only", {"role_ids": "insurance-claims"})
    issued(stack, public_key, read_creds(client, insurance.path, "claims-only"))
    for other in (lending, clcm):
        error_text(read_creds(client, other.path, "claims-only"), 400)
        assert "claims-only" not in client.list(f"{other.path}/roles")
        assert client.request("GET", f"{other.path}/roles/claims-only").status_code == 404
    # Same role name on every mount, yet each token is its own unit's.
    subjects = {
        unit.name: issued(stack, public_key, read_creds(client, unit.path, "producer")).claims
        for unit in units.values()
    }
    for unit in units.values():
        assert subjects[unit.name]["sub"] == unit.client_id
        assert subjects[unit.name]["scope"] == [f"{unit.name}-producer"]
        assert client.read(f"{unit.path}/config")["data"]["client_id"] == unit.client_id
    # Deleting a role on one mount leaves the others alone.
    client.delete(f"{lending.path}/roles/producer")
    error_text(read_creds(client, lending.path, "producer"), 400)
    issued(stack, public_key, read_creds(client, clcm.path, "producer"))


# -- config --------------------------------------------------------------------------------


def test_config_read_never_shows_the_key(
    stack: SkyflowStack, client: BaoClient, units: dict[str, Unit]
) -> None:
    for unit in units.values():
        response = client.request("GET", f"{unit.path}/config")
        assert response.status_code == 200
        marker, body_lines = key_material_in(response.text, unit.credentials)
        assert not marker, f"{unit.name}: the config read has a PEM marker"
        assert body_lines == 0, f"{unit.name}: the config read has key lines"
        data = response.json()["data"]
        assert not {"privateKey", "private_key", "credentials_json"} & set(data)
        assert data["client_id"] == unit.client_id
        assert data["key_id"] == unit.credentials["keyID"]
        assert data["token_uri"] == unit.credentials["tokenURI"]
        assert data["version"] == 1
        assert rfc3339(data["last_updated"])
    # Nor does the answer to a write, nor the CLI's view of the read.
    unit = units["insurance"]
    written = client.request(
        "POST", f"{unit.path}/config", json={"credentials_json": json.dumps(unit.credentials)}
    )
    assert written.status_code == 200
    marker, body_lines = key_material_in(written.text, unit.credentials)
    assert (marker, body_lines) == (False, 0)
    written_data = written.json()["data"]
    assert written_data["version"] == 2
    shown = stack.bao.cli("read", "-format=json", f"{unit.path}/config")
    assert shown.returncode == 0, shown.stderr
    marker, body_lines = key_material_in(shown.stdout, unit.credentials)
    assert (marker, body_lines) == (False, 0)


def test_config_update_keeps_fields_and_rotation_switches_accounts(
    stack: SkyflowStack, public_key: str, client: BaoClient, units: dict[str, Unit]
) -> None:
    unit = units["clcm"]
    client.write(f"{unit.path}/config", {"description": "CLCM unit", "tags": "bu=clcm,env=test"})
    config = client.read(f"{unit.path}/config")["data"]
    assert config["client_id"] == unit.client_id
    assert config["description"] == "CLCM unit"
    assert config["tags"] == ["bu=clcm", "env=test"]
    assert config["version"] == 2
    rotated = stack.new_account()
    client.write(f"{unit.path}/config", {"credentials_json": rotated})  # as a JSON object
    config = client.read(f"{unit.path}/config")["data"]
    assert config["client_id"] == rotated["clientID"]
    assert config["description"] == "CLCM unit"
    assert config["version"] == 3
    got = issued(stack, public_key, read_creds(client, unit.path, "producer"))
    assert got.claims["sub"] == rotated["clientID"]


# -- errors --------------------------------------------------------------------------------


def test_unknown_role_is_400(client: BaoClient, unit_path: str) -> None:
    for method in ("GET", "POST"):
        message = error_text(read_creds(client, unit_path, "no-such-role", method=method), 400)
        assert "no-such-role" in message


def test_unconfigured_mount_is_400_saying_so(stack: SkyflowStack, client: BaoClient) -> None:
    path = enable(stack, "skyflow/unconfigured")
    client.write(f"{path}/roles/producer", {"role_ids": "r-1"})
    for method in ("GET", "POST"):
        message = error_text(read_creds(client, path, "producer", method=method), 400)
        assert "not configured" in message
        assert "config" in message
    assert client.request("GET", f"{path}/config").status_code == 404
    # An unknown role is named even there.
    assert "no-such-role" in error_text(read_creds(client, path, "no-such-role"), 400)


@pytest.mark.parametrize(
    "ctx",
    [
        {"user-id": "u-1"},
        {"user id": "u-1"},
        {"": "u-1"},
        {"ok": "1", "not.ok": "2"},
        ["not", "a", "map"],
        42.5,
    ],
    ids=["dash", "space", "empty-key", "dot", "list", "float"],
)
def test_bad_ctx_is_400_naming_ctx(client: BaoClient, unit_path: str, ctx: Any) -> None:
    message = error_text(read_creds(client, unit_path, "producer", ctx, method="POST"), 400)
    assert "ctx" in message


def _account_with(stack: SkyflowStack, **changes: str | None) -> str:
    account: dict[str, str | None] = {**stack.new_account(), **changes}
    return json.dumps({k: v for k, v in account.items() if v is not None})


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"tokenURI": "http://127.0.0.1:1/v1/auth/sa/oauth/token"}, "credentials_json.tokenURI"),
        ({"tokenURI": "not a url"}, "credentials_json.tokenURI"),
        ({"clientID": None}, "credentials_json.clientID"),
        ({"keyID": None}, "credentials_json.keyID"),
        (
            {"privateKey": "-----BEGIN " + "PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"},
            "credentials_json.privateKey",
        ),
        ({"privateKey": None}, "credentials_json.privateKey"),
    ],
    ids=["http-token-uri", "junk-token-uri", "no-client-id", "no-key-id", "bad-pem", "no-key"],
)
def test_invalid_credentials_json_is_400_naming_the_field(
    stack: SkyflowStack, client: BaoClient, change: dict[str, str | None], field_name: str
) -> None:
    path = enable(stack, "skyflow/badcreds")
    response = client.request(
        "POST", f"{path}/config", json={"credentials_json": _account_with(stack, **change)}
    )
    message = error_text(response, 400)
    echoes_key = "PRIVATE KEY" in message
    assert not echoes_key, "the error echoes key material"
    assert field_name in message
    assert client.request("GET", f"{path}/config").status_code == 404  # nothing stored


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"credentials_json": "[1, 2]"}, "credentials_json"),
        ({"credentials_json": "{not json"}, "credentials_json"),
        ({"credentials_file_path": "relative/path.json"}, "credentials_file_path"),
        ({"credentials_file_path": "/nonexistent/skyflow/sa.json"}, "credentials_file_path"),
        ({"description": "no credentials at all"}, "credentials_json"),
    ],
    ids=["json-list", "json-broken", "relative-path", "missing-file", "no-source"],
)
def test_other_config_errors_are_400_naming_the_field(
    stack: SkyflowStack, client: BaoClient, body: dict[str, str], field_name: str
) -> None:
    path = enable(stack, "skyflow/badcfg")
    message = error_text(client.request("POST", f"{path}/config", json=body), 400)
    assert field_name in message


def test_both_credential_sources_is_400(
    stack: SkyflowStack, client: BaoClient, tmp_path: Path
) -> None:
    account = stack.new_account()
    creds_file = tmp_path / "sa.json"
    creds_file.write_text(json.dumps(account))
    path = enable(stack, "skyflow/both")
    body = {"credentials_json": json.dumps(account), "credentials_file_path": str(creds_file)}
    message = error_text(client.request("POST", f"{path}/config", json=body), 400)
    assert "credentials_json" in message
    assert "credentials_file_path" in message
    assert client.request("GET", f"{path}/config").status_code == 404


def test_a_failed_config_write_keeps_the_previous_config_working(
    stack: SkyflowStack,
    public_key: str,
    client: BaoClient,
    units: dict[str, Unit],
    fresh_emulator: EmulatorAdmin,
) -> None:
    unit = units["insurance"]
    bad = client.request(
        "POST",
        f"{unit.path}/config",
        json={"credentials_json": _account_with(stack, tokenURI="http://x/token")},
    )
    error_text(bad, 400)
    fresh_emulator.set_faults(reject=True)
    rejected = client.request(
        "POST", f"{unit.path}/config", json={"credentials_json": json.dumps(stack.new_account())}
    )
    assert "credentials_json" in error_text(rejected, 400)
    fresh_emulator.reset()
    config = client.read(f"{unit.path}/config")["data"]
    assert config["client_id"] == unit.client_id
    assert config["version"] == 1
    got = issued(stack, public_key, read_creds(client, unit.path, "producer", "after-failures"))
    assert got.claims["sub"] == unit.client_id


@pytest.mark.parametrize(
    "role_ids",
    [[], "", " ", ["ok", "has space"], ["x" * 129], [f"r{i}" for i in range(65)], ["a", "a"]],
    ids=["empty-list", "empty-string", "blank", "whitespace", "too-long", "too-many", "repeat"],
)
def test_bad_role_ids_are_400_naming_the_field(
    client: BaoClient, unit_path: str, role_ids: Any
) -> None:
    path = unit_path
    response = client.request("POST", f"{path}/roles/bad", json={"role_ids": role_ids})
    assert "role_ids" in error_text(response, 400)
    assert client.request("GET", f"{path}/roles/bad").status_code == 404


def test_skyflow_rejecting_the_account_is_502_with_its_category_and_request_id(
    client: BaoClient, units: dict[str, Unit], fresh_emulator: EmulatorAdmin
) -> None:
    unit = units["lending"]
    fresh_emulator.set_faults(reject=True)
    message = error_text(read_creds(client, unit.path, "producer", "rejected"), 502)
    rejections = [
        r for r in fresh_emulator.stats()["rejections"] if r["client_id"] == unit.client_id
    ]
    assert len(rejections) == 1
    assert rejections[0]["status"] == 401
    assert "rejected" in message  # the category
    assert rejections[0]["message"] not in message  # Skyflow's own text goes to the log only
    assert rejections[0]["request_id"] in message  # its X-Request-Id
    assert "401" in message
    token_shaped = "eyJ" in message
    assert not token_shaped, "the error carries something shaped like a JWT"


@pytest.mark.parametrize("status", [503, 500, 429])
def test_skyflow_failing_is_503_never_500(
    client: BaoClient, units: dict[str, Unit], fresh_emulator: EmulatorAdmin, status: int
) -> None:
    fresh_emulator.set_faults(fail_status=status, fail_count=1000)
    category = "rate limited" if status == 429 else "failing"
    for method, ctx in (("GET", f"down-{status}"), ("POST", {"outage": str(status)})):
        message = error_text(
            read_creds(client, units["clcm"].path, "producer", ctx, method=method), 503
        )
        assert f"Skyflow token request failed: {category}" in message
        assert "Injected fault" not in message  # Skyflow's own text: the log only
        if status == 429 and method == "POST":
            # after the 429 the whole mount pauses: this ctx is not even sent to Skyflow
            assert "backing off" in message
            continue
        assert str(status) in message
        assert "request id" in message


def test_skyflow_unreachable_is_503(stack: SkyflowStack, client: BaoClient) -> None:
    path = enable(stack, "skyflow/unreachable")
    dead_uri = f"https://{stack.dead_host}/v1/auth/sa/oauth/token"  # allowed, nobody listens
    credentials = _account_with(stack, tokenURI=dead_uri)
    client.write(f"{path}/config", {"credentials_json": credentials, "validate_credentials": False})
    client.write(f"{path}/roles/producer", {"role_ids": "r-1"})
    message = error_text(read_creds(client, path, "producer"), 503)
    assert "unreachable" in message
    # Validating such credentials is refused with 503 too, and nothing changes.
    response = client.request("POST", f"{path}/config", json={"credentials_json": credentials})
    error_text(response, 503)
    assert client.read(f"{path}/config")["data"]["version"] == 1


# -- deletes -------------------------------------------------------------------------------


def test_deleting_a_role(
    stack: SkyflowStack, public_key: str, client: BaoClient, units: dict[str, Unit]
) -> None:
    unit = units["insurance"]
    issued(stack, public_key, read_creds(client, unit.path, "producer"))
    client.delete(f"{unit.path}/roles/producer")
    assert client.request("GET", f"{unit.path}/roles/producer").status_code == 404
    assert client.list(f"{unit.path}/roles") == ["consumer-analytics"]
    error_text(read_creds(client, unit.path, "producer"), 400)
    # The other role still works; recreating the role brings it back with the new IDs.
    issued(stack, public_key, read_creds(client, unit.path, "consumer-analytics"))
    client.write(f"{unit.path}/roles/producer", {"role_ids": "insurance-producer-v2"})
    got = issued(stack, public_key, read_creds(client, unit.path, "producer"))
    assert got.claims["scope"] == ["insurance-producer-v2"]


def test_deleting_the_config(
    stack: SkyflowStack, public_key: str, client: BaoClient, units: dict[str, Unit]
) -> None:
    unit = units["lending"]
    issued(stack, public_key, read_creds(client, unit.path, "producer"))
    client.delete(f"{unit.path}/config")
    assert client.request("GET", f"{unit.path}/config").status_code == 404
    message = error_text(read_creds(client, unit.path, "producer"), 400)
    assert "not configured" in message
    assert sorted(client.list(f"{unit.path}/roles")) == ["consumer-analytics", "producer"]
    # Other units are unaffected.
    issued(stack, public_key, read_creds(client, units["clcm"].path, "producer"))


# -- health --------------------------------------------------------------------------------


def test_health_is_200_when_everything_works(client: BaoClient, units: dict[str, Unit]) -> None:
    for unit in units.values():
        response = client.request("GET", f"{unit.path}/health")
        assert response.status_code == 200, response.text
        health = health_body(response)
        assert health["healthy"] is True
        assert set(health["checks"]) == {"storage", "config", "skyflow"}
        assert all(check["ok"] for check in health["checks"].values())
        assert health["checks"]["config"]["client_id"] == unit.client_id
        assert str(health["version"]).startswith("v")


def test_health_is_503_when_unconfigured(stack: SkyflowStack, client: BaoClient) -> None:
    path = enable(stack, "skyflow/nohealth")
    response = client.request("GET", f"{path}/health")
    assert response.status_code == 503, response.text
    health = health_body(response)
    assert health["healthy"] is False
    assert health["checks"]["storage"]["ok"] is True
    assert health["checks"]["config"]["ok"] is False
    assert "not configured" in health["checks"]["config"]["message"]
    assert health["checks"]["skyflow"]["ok"] is False


@pytest.mark.parametrize(
    ("knobs", "status"),
    [({"fail_status": 503, "fail_count": 1000}, 503), ({"reject": True}, 401)],
    ids=["skyflow-down", "skyflow-rejects"],
)
def test_health_is_503_when_skyflow_fails(
    stack: SkyflowStack,
    client: BaoClient,
    fresh_emulator: EmulatorAdmin,
    knobs: dict[str, Any],
    status: int,
) -> None:
    # Unvalidated config: no probe token is held, so health must ask Skyflow.
    path = enable(stack, "skyflow/sickhealth")
    client.write(
        f"{path}/config",
        {"credentials_json": json.dumps(stack.new_account()), "validate_credentials": False},
    )
    fresh_emulator.set_faults(**knobs)
    response = client.request("GET", f"{path}/health")
    assert response.status_code == 503, response.text
    health = health_body(response)
    assert health["healthy"] is False
    assert health["checks"]["config"]["ok"] is True
    assert health["checks"]["skyflow"]["ok"] is False
    assert health["checks"]["skyflow"]["status"] == status
    fresh_emulator.reset()
    recovered = client.request("GET", f"{path}/health")
    assert recovered.status_code == 200, recovered.text


# -- path-help -----------------------------------------------------------------------------


def test_path_help_for_creds_and_roles(stack: SkyflowStack, units: dict[str, Unit]) -> None:
    path = units["insurance"].path
    creds = stack.bao.cli("path-help", f"{path}/creds/producer")
    assert creds.returncode == 0, creds.stderr
    for word in ("ctx", "access_token", "expires_in", "expires_at", "400", "502", "503"):
        assert word in creds.stdout, word
    roles = stack.bao.cli("path-help", f"{path}/roles/producer")
    assert roles.returncode == 0, roles.stderr
    for word in ("role_ids", "description", "tags", "min_remaining_ttl", "ctx_mode"):
        assert word in roles.stdout, word
    config = stack.bao.cli("path-help", f"{path}/config")
    assert config.returncode == 0, config.stderr
    assert "credentials_json" in config.stdout
    assert "credentials_file_path" in config.stdout
