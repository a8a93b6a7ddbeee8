"""docs/api.md agrees with the plugin: with its path-help, and with what it answers.

The backend runs in-process (through the real gRPC Backend service) against the in-process
Skyflow emulator. Checked both ways, so neither the docs nor the code can drift alone:

* the paths, and for each path its operations (with their summaries) and its fields (type,
  default, required) as ``path-help`` shows them;
* the response fields and their types, from real responses;
* the errors: every error the scenarios below provoke is listed for its path (or for every
  path), and every listed error is provoked by some scenario.

Also: every error message in operations.md's troubleshooting table exists in the source, and
every environment variable operations.md documents is read somewhere in the source.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skyflow_emulator import InProcessEmulator
from skyflow_emulator.state import Faults
from skyflow_vault_plugin.skyflow.backend import make_factory
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.mount import EngineSettings
from vault_plugin_sdk.framework.help import display_pattern
from vault_plugin_sdk.testing import Outcome, PluginTestClient, open_driver

EMULATOR_HOSTS = TokenHosts.parse("emulator.test")  # the in-process emulator's host

REPO = Path(__file__).resolve().parents[2]
API = REPO / "docs" / "api.md"
OPERATIONS = REPO / "docs" / "operations.md"
# What the plugin runs: the engine and the SDK it is built on.
SOURCES = (REPO / "src" / "skyflow_vault_plugin", REPO / "sdk" / "src" / "vault_plugin_sdk")
POLICY = ExchangePolicy(
    connect_timeout=1.0, read_timeout=1.0, deadline=2.0, max_attempts=2, backoff_base=0.01
)
GENERAL = "Errors"  # the api.md section whose errors apply to every path


# -- reading the docs --------------------------------------------------------------------------


def _sections(text: str) -> dict[str, str]:
    """``## `config` `` -> "config"; other ``## Heading`` -> "Heading"."""
    found: dict[str, str] = {}
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        found[heading.strip().strip("`")] = body
    return found


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


def _tables(text: str) -> list[Table]:
    tables: list[Table] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append(Table(header, rows))
        else:
            i += 1
    return tables


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(section: str, first: str) -> Table | None:
    matches = [t for t in _tables(section) if t.header[0] == first]
    assert len(matches) <= 1, f"more than one '{first}' table in a section"
    return matches[0] if matches else None


def _code(cell: str) -> str:
    """The first `code` span of a cell, or the cell."""
    match = re.search(r"`([^`]*)`", cell)
    return match.group(1) if match else cell


# -- reading path-help ---------------------------------------------------------------------------

_PARAMETER = re.compile(
    r"^(?P<name>\w+) \((?P<type>\w+)\)(?:, default: (?P<default>.+?))?(?P<required>, required)?$"
)


@dataclass
class PathHelp:
    fields: dict[str, tuple[str, str | None, bool]]
    operations: dict[str, str]


def _parse_help(text: str) -> PathHelp:
    fields: dict[str, tuple[str, str | None, bool]] = {}
    operations: dict[str, str] = {}
    block = ""
    for line in text.splitlines():
        if line.startswith("## "):
            block = line[3:].strip()
            continue
        if block == "PARAMETERS" and (match := _PARAMETER.match(line)):
            default = match.group("default")
            shown = json.dumps(ast.literal_eval(default)) if default is not None else None
            fields[match.group("name")] = (match.group("type"), shown, bool(match["required"]))
        elif block == "OPERATIONS" and (op := re.match(r"^(\w[\w-]*): (.*)$", line)):
            operations[op.group(1)] = op.group(2).strip()
    return PathHelp(fields, operations)


def _concrete(display: str) -> str:
    return display.replace("<name>", "example")


# -- driving the backend -------------------------------------------------------------------------


@dataclass
class Observed:
    section: str
    outcome: Outcome

    @property
    def message(self) -> str:
        """The first error, with Vault's multierror layout folded onto one line."""
        return " ".join(self.outcome.errors[0].split()) if self.outcome.errors else ""


@pytest.fixture
async def plugin(tmp_path: Path) -> AsyncIterator[tuple[PluginTestClient, InProcessEmulator]]:
    emulator = InProcessEmulator()
    factory = make_factory(
        EngineSettings(
            policy=POLICY,
            transport=emulator.transport(),
            allowed_token_hosts=EMULATOR_HOSTS,
            credentials_dir=str(tmp_path),  # the mount reads <tmp_path>/skyflow/insurance/
        )
    )
    async with open_driver("grpc", factory) as driver:
        yield PluginTestClient(driver, mount_point="skyflow/insurance/"), emulator


async def _scenarios(
    client: PluginTestClient, emulator: InProcessEmulator, tmp_path: Path
) -> list[Observed]:
    seen: list[Observed] = []
    account = emulator.create_account("api-reference")
    creds = json.dumps(account)

    async def call(section: str, operation: str, path: str, data: Any = None) -> Outcome:
        if operation == "write":
            outcome = await client.write(path, data)
        elif operation == "read":
            outcome = await client.read(path, data)
        else:
            outcome = await client.call(operation, path, data)
        seen.append(Observed(section, outcome))
        return outcome

    def faults(**knobs: Any) -> None:
        emulator.state.faults = Faults(**knobs)

    # Nothing configured yet.
    await call("config", "read", "config")
    await call("health", "read", "health")
    await call("health", "read", "health", {"unhealthy_code": "204"})
    await call("roles/", "list", "roles/")
    await call("roles/<name>", "read", "roles/missing")
    await call("creds/<name>", "read", "creds/missing")
    await call("roles/<name>", "write", "roles/r", {"description": "no ids"})
    await call("roles/<name>", "write", "roles/r", {"role_ids": "ins-a,ins-b"})
    await call("creds/<name>", "read", "creds/r")

    # config: every refusal, then a file and a JSON config.
    await call("config", "write", "config", {"description": "no source"})
    await call(
        "config", "write", "config", {"credentials_json": creds, "credentials_file_path": "/x"}
    )
    await call(
        "config", "write", "config", {"credentials_json": {**account, "tokenURI": "http://x"}}
    )
    await call("config", "write", "config", {"credentials_file_path": "relative.json"})
    off_list = {**account, "tokenURI": "https://10.0.0.1:22/v1/auth/sa/oauth/token"}
    await call("config", "write", "config", {"credentials_json": off_list})
    own_dir = tmp_path / "skyflow" / "insurance"
    await call("config", "write", "config", {"credentials_file_path": f"{own_dir}/none.json"})
    await call("config", "write", "config", {"credentials_json": creds, "description": "d" * 2000})
    await call("config", "write", "config", {"credentials_json": creds, "colour": "blue"})
    await call("config", "write", "config", {"credential_json": creds})
    await call("config", "write", "config", {"credentials_json": "{clientID: x}"})
    await call("config", "write", "config", {"credentials_json": "account.json"})
    faults(reject=True)
    await call("config", "write", "config", {"credentials_json": creds})
    faults(fail_status=503)
    await call("config", "write", "config", {"credentials_json": creds})
    faults()
    file = tmp_path / "skyflow" / "insurance" / "account.json"
    file.parent.mkdir(parents=True)
    file.write_text(creds)
    assert (await call("config", "write", "config", {"credentials_file_path": str(file)})).warnings
    await call("config", "write", "config", {"credentials_json": creds, "tags": "unit=ins"})
    await call("config", "read", "config")

    # roles
    await call("roles/", "list", "roles/")
    await call("roles/<name>", "read", "roles/r")
    await call("roles/<name>", "write", "roles/bad", {"role_ids": "has blank"})
    await call("roles/<name>", "write", "roles/bad", {"role_ids": "a", "min_remaining_ttl": "2h"})
    await call("roles/<name>", "write", "roles/bad", {"role_ids": "a", "ctx_mode": "open"})
    restricted = {"role_ids": "a", "ctx_mode": "restricted", "required_ctx_keys": "k"}
    await call("roles/<name>", "write", "roles/bad", restricted)
    await call(
        "roles/<name>",
        "write",
        "roles/bad",
        {"role_ids": "a", "ctx_mode": "none", "required_ctx_keys": "k"},
    )
    await call("roles/<name>", "write", "roles/bad", {"role_ids": "a", "ctx_template": {"u": "x"}})
    await call("roles/<name>", "write", "roles/bad", {"role_ids": "a", "tags": "has blank"})
    await call("roles/<name>", "write", "roles/only-keys", {**restricted, "allowed_ctx_keys": "k"})
    await call(
        "roles/<name>",
        "write",
        "roles/per-user",
        {"role_ids": "a", "ctx_mode": "none", "ctx_template": {"u": "{{identity.entity.id}}"}},
    )
    await call("roles/<name>", "write", "roles/fresh", {"role_ids": "a", "cache_tokens": False})

    # creds
    await call("creds/<name>", "read", "creds/r")
    await call("creds/<name>", "write", "creds/r", {"ctx": {"user_id": "u1"}})
    await call("creds/<name>", "write", "creds/r", {"ctx": 42})
    await call("creds/<name>", "write", "creds/r", {"ctx": '{"user_id":"u1"}'})
    await call("creds/<name>", "read", "creds/r", {"ctx": "{user_id:u1}"})
    await call("creds/<name>", "write", "creds/only-keys", {"ctx": "k"})
    await call("creds/<name>", "write", "creds/r", {"ctx": {"not-a-key": 1}})
    await call("creds/<name>", "write", "creds/only-keys", {"ctx": {"k": 1, "z": 2}})
    await call("creds/<name>", "write", "creds/per-user", {"ctx": {"u": "me"}})
    await call("creds/<name>", "read", "creds/per-user")
    await call("creds/<name>", "delete", "creds/r")
    await call("creds/<name>", "read", "no/such/path")
    faults(reject=True)
    await call("creds/<name>", "read", "creds/fresh")
    faults(fail_status=503)
    await call("creds/<name>", "read", "creds/fresh")
    faults()
    await call("health", "read", "health")
    return seen


# -- the checks ----------------------------------------------------------------------------------


async def test_paths_operations_and_fields_match_path_help(
    plugin: tuple[PluginTestClient, InProcessEmulator],
) -> None:
    client, _ = plugin
    sections = _sections(API.read_text())
    root_help = await client.help("")
    patterns = re.findall(r"^    \^(.+)\$$", root_help, re.MULTILINE)
    displays = [display_pattern(p) for p in patterns]
    documented = {name for name in sections if "/" in name or name.islower()}
    assert documented == set(displays)

    for display in displays:
        help_text = _parse_help(await client.help(_concrete(display)))
        section = sections[display]

        ops = _table(section, "Operation")
        assert ops is not None, f"{display}: no operations table"
        assert {_code(r[0]): r[2] for r in ops.rows} == help_text.operations, display

        fields = _table(section, "Field")
        documented_fields: dict[str, tuple[str, str | None, bool]] = {}
        for row in fields.rows if fields else []:
            default = None if row[2] == "—" else _code(row[2])
            assert row[3] in ("yes", "no"), f"{display} {row[0]}: Required is yes or no"
            documented_fields[_code(row[0])] = (_code(row[1]), default, row[3] == "yes")
        assert documented_fields == help_text.fields, display


# The Type column's names for response values; bool before int (a bool is an int).
_DOC_TYPES: list[tuple[type, str]] = [
    (bool, "bool"),
    (int, "int"),
    (str, "string"),
    (list, "list"),
    (dict, "map"),
]


def _doc_type(value: Any) -> str:
    for kind, name in _DOC_TYPES:
        if isinstance(value, kind):
            return name
    raise AssertionError(f"unexpected response value type {type(value).__name__}")


def _pattern(message_cell: str) -> re.Pattern[str]:
    text = message_cell.strip()
    if text == "—":
        return re.compile(r"\Z")
    text = _code(text)
    parts = re.split(r"(<[^>]+>)", text)
    regex = "".join(".+?" if re.fullmatch(r"<[^>]+>", p) else re.escape(p) for p in parts)
    return re.compile(regex)


async def test_responses_and_errors_match_the_reference(
    plugin: tuple[PluginTestClient, InProcessEmulator], tmp_path: Path
) -> None:
    client, emulator = plugin
    observed = await _scenarios(client, emulator, tmp_path)
    sections = _sections(API.read_text())

    # Response fields: union over every successful answer of a path.
    answered: dict[str, dict[str, set[str]]] = {}
    for seen in observed:
        if seen.outcome.status == 200 or (seen.section == "health" and seen.outcome.data):
            types = answered.setdefault(seen.section, {})
            for key, value in seen.outcome.data.items():
                types.setdefault(key, set()).add(_doc_type(value))
    for section, types in answered.items():
        table = _table(sections[section], "Response field")
        assert table is not None, f"{section}: no response table"
        documented = {_code(r[0]): _code(r[1]) for r in table.rows}
        assert set(documented) == set(types), section
        for key, kinds in types.items():
            assert kinds == {documented[key]}, f"{section}.{key}: {kinds} != {documented[key]}"

    # Errors: both ways.
    rows: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
    for name, body in sections.items():
        table = _table(body, "Status")
        if table is not None:
            rows[name] = [(int(r[0]), _pattern(r[1])) for r in table.rows]
    used: set[tuple[str, int]] = set()
    for seen in observed:
        status = seen.outcome.status
        if status < 400:
            continue
        candidates = [(seen.section, i, r) for i, r in enumerate(rows.get(seen.section, []))]
        candidates += [(GENERAL, i, r) for i, r in enumerate(rows[GENERAL])]
        hits = [
            (name, i)
            for name, i, (code, pattern) in candidates
            if code == status and pattern.match(seen.message)
        ]
        assert hits, f"undocumented {status} on {seen.section}: {seen.message!r}"
        used.update(hits)
    for name, entries in rows.items():
        for i, (code, pattern) in enumerate(entries):
            assert (name, i) in used, f"{name}: documented {code} {pattern.pattern!r} never seen"


def _source_strings() -> list[str]:
    """Every string literal of the package, implicit concatenations joined (as the parser
    does), f-string fields replaced by NUL."""
    found: list[str] = []
    for path in (p for source in SOURCES for p in source.rglob("*.py")):
        if "pb" in path.parent.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                found.append(
                    "".join(
                        str(v.value) if isinstance(v, ast.Constant) else "\0" for v in node.values
                    )
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return found


def test_troubleshooting_messages_exist_in_the_source() -> None:
    """Each message in operations.md's troubleshooting table is produced by the code."""
    text = OPERATIONS.read_text()
    section = text.split("## Troubleshooting", 1)[1]
    table = _table(section, "Message (or symptom)")
    assert table is not None
    source = "\n".join(_source_strings())
    checked = 0
    for row in table.rows:
        for quoted in re.findall(r"`([^`]+)`", row[0]):
            pieces = re.split(r"'?<[^>]+>'?|\.\.\.|[()]", quoted)
            fragments = [f for f in pieces if len(f.strip()) > 6]
            for fragment in fragments:
                if fragment.strip().startswith(("invalid value for field", "* ", "Code:")):
                    continue  # the SDK's wrapper, or the host's own text
                assert fragment.strip() in source, f"not in the source: {fragment!r}"
                checked += 1
    assert checked >= 10


def test_documented_environment_variables_are_read_by_the_code() -> None:
    text = OPERATIONS.read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    table = _table(section, "Variable")
    assert table is not None
    literals = set(_source_strings())
    names = [_code(row[0]) for row in table.rows]
    assert len(names) >= 8
    for name in names:
        if name.startswith(("OTEL_", "SSL_")) or name.endswith("_PROXY"):
            continue  # read by the OpenTelemetry SDK, by OpenSSL and by httpx themselves
        assert name in literals, f"{name} is not read by the code"
