"""Hostile input on every field of every path: the engine refuses it cleanly.

Every case must give a 4xx whose message names the field, never a 5xx, never a crash, and
must leave what is stored exactly as it was (storage is compared byte for byte in-process,
and read back through the API on the real server). Free-text fields may accept odd Unicode;
then what is read back must be what was written.

Two tiers:

* in-process (fast, no server): table-driven cases for every field of ``config``,
  ``roles/<name>`` and ``creds/<name>``, and hypothesis properties, through the plugin's real
  gRPC Backend service (``sdk.testing.open_driver("grpc", ...)``) and the in-process emulator;
* on a real OpenBao (``e2e``): the nastiest cases through the HTTP API, where OpenBao's own
  JSON handling sits in front of the plugin, with the plugin's PID checked after each case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyflow_emulator import InProcessEmulator
from skyflow_vault_plugin.skyflow.backend import make_factory
from skyflow_vault_plugin.skyflow.client import ExchangePolicy
from skyflow_vault_plugin.skyflow.credentials import TokenHosts
from skyflow_vault_plugin.skyflow.mount import EngineSettings
from skyflow_vault_plugin.skyflow.path_roles import ROLE_FIELDS
from vault_plugin_sdk.testing import Outcome, PluginTestClient, open_driver

from .conftest import Stack, error_text

EMULATOR_HOSTS = TokenHosts.parse("emulator.test")  # the in-process emulator's host

T = TypeVar("T")

MOUNT = "skyflow/hostile/"
MB = 1024 * 1024
POLICY = ExchangePolicy(
    connect_timeout=1.0, read_timeout=1.0, deadline=2.0, backoff_base=0.01, backoff_max=0.02
)
PROPERTY = settings(
    max_examples=40,
    database=None,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------- key material


def _pem_private(key: Any, encryption: Any = None) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption or serialization.NoEncryption(),
        ).decode()
    )


_RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
_RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
BAD_PEMS = {
    "empty": "",
    "not a pem": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    "truncated body": "-----BEGIN " + "PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    "no end line": "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n",
    "ec key": _pem_private(ec.generate_private_key(ec.SECP256R1())),
    "rsa 1024": _pem_private(_RSA_1024),
    "encrypted": _pem_private(
        _RSA_2048, serialization.BestAvailableEncryption(b"correct horse battery")
    ),
    "public key": _RSA_2048.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode(),
    "over 64 KiB": "-----BEGIN "
    + "PRIVATE KEY-----\n"
    + "A" * 70_000
    + "\n-----END PRIVATE KEY-----",
}
BAD_TOKEN_URIS = {
    "http": "http://127.0.0.1/v1/auth/sa/oauth/token",
    "ftp": "ftp://example.com/token",
    "javascript": "javascript:alert(1)",
    "no host": "https://",
    "user info": "https://user:secret@example.com/token",
    "bad port": "https://example.com:99999/token",
    "port 0": "https://example.com:0/token",
    "space": "https://exa mple.com/token",
    "control char": "https://example.com/\x07token",
    "bracket": "https://[::1/token",
    "relative": "/v1/auth/sa/oauth/token",
    "number": 443,
}


# ---------------------------------------------------------------- the engine in-process


class Engine:
    """One mount of the engine behind the real gRPC Backend service, on its own event loop
    in a thread, so that synchronous hypothesis tests can drive it example after example."""

    def __init__(self) -> None:
        self.emulator = InProcessEmulator()
        self.credentials = self.emulator.create_account("hostile-input")
        self.credentials_dir = Path(tempfile.mkdtemp(prefix="hostile-credentials-"))
        self.own_dir = plant_credentials_files(self.credentials_dir, self.credentials)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        self.client: PluginTestClient = self._run(self._open())

    async def _open(self) -> PluginTestClient:
        settings_ = EngineSettings(
            transport=self.emulator.transport(),
            policy=POLICY,
            allowed_token_hosts=EMULATOR_HOSTS,
            credentials_dir=str(self.credentials_dir),
        )
        driver = await self._stack.enter_async_context(open_driver("grpc", make_factory(settings_)))
        return PluginTestClient(driver, mount_point=MOUNT)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def write(self, path: str, data: dict[str, Any]) -> Outcome:
        return self._run(self.client.write(path, data))

    def read(self, path: str, params: dict[str, Any] | None = None) -> Outcome:
        return self._run(self.client.read(path, params))

    def snapshot(self) -> dict[str, bytes]:
        """Every stored entry, byte for byte."""

        async def collect() -> dict[str, bytes]:
            storage = self.client.storage
            keys: list[str] = []
            pending = [""]
            while pending:
                prefix = pending.pop()
                for item in await storage.list(prefix):
                    (pending if item.endswith("/") else keys).append(prefix + item)
            found = {}
            for key in keys:
                entry = await storage.get(key)
                if entry is not None:
                    found[key] = bytes(entry.value)
            return found

        return self._run(collect())

    def token_calls(self) -> int:
        return self.emulator.state.token_calls

    def close(self) -> None:
        try:
            self._run(self._stack.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            shutil.rmtree(self.credentials_dir, ignore_errors=True)


def plant_credentials_files(credentials_dir: Path, credentials: dict[str, str]) -> Path:
    """What a hostile mount admin finds or plants under ``SKYFLOW_CREDENTIALS_DIR``: another
    unit's valid key file, and in its own directory a FIFO, a directory, an oversized file,
    garbage, and symlinks to the other unit, to a device and out of the tree. Returns the
    mount's own directory."""
    own = credentials_dir / MOUNT
    other = credentials_dir / "skyflow" / "other"
    own.mkdir(parents=True)
    other.mkdir(parents=True)
    (other / "key.json").write_text(json.dumps(credentials))
    os.mkfifo(own / "fifo.json")
    (own / "dir.json").mkdir()
    (own / "big.json").write_bytes(b" " * (256 * 1024 + 1))
    (own / "garbled.json").write_text(json.dumps(credentials)[:-5])
    (own / "nested.json").write_text(_deep(100_000))
    (own / "other.json").symlink_to(other / "key.json")
    (own / "zero.json").symlink_to("/dev/zero")
    (own / "units").symlink_to(credentials_dir / "skyflow")
    return own


ROLES: dict[str, dict[str, Any]] = {
    "r": {"role_ids": ["base-role"], "description": "the baseline", "tags": ["base"]},
    "restricted": {
        "role_ids": ["r2"],
        "ctx_mode": "restricted",
        "allowed_ctx_keys": ["user", "tenant"],
        "required_ctx_keys": ["user"],
    },
    "noctx": {"role_ids": ["r3"], "ctx_mode": "none"},
}


ROLE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "tags": [],
    "min_remaining_ttl": 600,
    "cache_tokens": True,
    "ctx_mode": "free",
    "allowed_ctx_keys": [],
    "required_ctx_keys": [],
    "ctx_template": {},
}


def write_baseline(engine: Engine) -> None:
    """(Re)write the config and every role with all their fields."""
    outcome = engine.write(
        "config",
        {
            "credentials_json": json.dumps(engine.credentials),
            "description": "baseline config",
            "tags": ["base"],
        },
    )
    assert outcome.status == 200, outcome.errors
    for name, fields in ROLES.items():
        outcome = engine.write(f"roles/{name}", {**ROLE_DEFAULTS, **fields})
        assert outcome.status == 200, outcome.errors
    for extra in engine.snapshot():
        name = extra.removeprefix("roles/")
        if extra.startswith("roles/") and name not in ROLES:
            engine._run(engine.client.delete(extra))


@pytest.fixture(scope="module")
def engine_module() -> Iterator[Engine]:
    running = Engine()
    try:
        write_baseline(running)
        yield running
    finally:
        running.close()


@contextlib.contextmanager
def baseline_kept(engine: Engine) -> Iterator[Engine]:
    """Put the engine back to the baseline when a case changed it (so that an input wrongly
    accepted by one case cannot skew the next)."""
    before = engine.snapshot()
    try:
        yield engine
    finally:
        if engine.snapshot() != before:
            write_baseline(engine)


@pytest.fixture
def engine(engine_module: Engine) -> Iterator[Engine]:
    with baseline_kept(engine_module) as kept:
        yield kept


def assert_refused(engine: Engine, path: str, data: dict[str, Any], field: str) -> Outcome:
    """Write ``data`` (or read, for ``creds`` with ``GET``) and check a clean refusal."""
    before = engine.snapshot()
    calls = engine.token_calls()
    outcome = engine.write(path, data)
    return check_refusal(engine, outcome, field, before, calls)


def check_refusal(
    engine: Engine, outcome: Outcome, field: str, before: dict[str, bytes], calls: int
) -> Outcome:
    message = " ".join(outcome.errors)
    assert 400 <= outcome.status < 500, f"HTTP {outcome.status}: {message[:300]}"
    assert f"'{field}" in message, f"the message does not name {field!r}: {message[:300]}"
    assert engine.snapshot() == before, "a refused request changed what is stored"
    if not field.startswith("credentials"):
        # config writes validate new credentials upstream; nothing else may call Skyflow
        assert engine.token_calls() == calls, "a refused request called Skyflow"
    return outcome


# ----------------------------------------------------------------------- table: config


def _creds_with(engine_creds: dict[str, str], **changes: Any) -> dict[str, Any]:
    creds: dict[str, Any] = dict(engine_creds)
    for key, value in changes.items():
        if value is _DROP:
            creds.pop(key, None)
        else:
            creds[key] = value
    return creds


_DROP = object()

CONFIG_CASES: list[tuple[str, dict[str, Any] | str, str]] = [
    # (id, data -- or a marker resolved against the account --, field named)
    ("json: a number", {"credentials_json": 42}, "credentials_json"),
    ("json: a boolean", {"credentials_json": True}, "credentials_json"),
    ("json: a list", {"credentials_json": ["clientID"]}, "credentials_json"),
    ("json: null", {"credentials_json": None}, "credentials_json"),
    ("json: empty text", {"credentials_json": ""}, "credentials_json"),
    ("json: blank text", {"credentials_json": " \n\t"}, "credentials_json"),
    ("json: not JSON", {"credentials_json": "{clientID: x}"}, "credentials_json"),
    ("json: text of an array", {"credentials_json": "[1, 2]"}, "credentials_json"),
    ("json: text of a string", {"credentials_json": '"creds"'}, "credentials_json"),
    ("json: text of null", {"credentials_json": "null"}, "credentials_json"),
    ("json: empty object", {"credentials_json": {}}, "credentials_json"),
    ("json: 1 MB text", {"credentials_json": "x" * MB}, "credentials_json"),
    ("json: deeply nested text", {"credentials_json": "[" * 60_000}, "credentials_json"),
    ("json: NUL in text", {"credentials_json": '{"clientID": "\x00"}'}, "credentials_json"),
    ("json: missing clientID", "drop:clientID", "credentials_json.clientID"),
    ("json: missing keyID", "drop:keyID", "credentials_json.keyID"),
    ("json: missing tokenURI", "drop:tokenURI", "credentials_json.tokenURI"),
    ("json: missing privateKey", "drop:privateKey", "credentials_json.privateKey"),
    ("json: clientID a number", "set:clientID=5", "credentials_json.clientID"),
    ("json: keyID a list", "set:keyID=[]", "credentials_json.keyID"),
    ("json: tokenURI an object", "set:tokenURI={}", "credentials_json.tokenURI"),
    ("json: privateKey a number", "set:privateKey=7", "credentials_json.privateKey"),
    ("json: clientName a list", "set:clientName=[]", "credentials_json.clientName"),
    ("json: clientID blank", 'set:clientID="  "', "credentials_json.clientID"),
    ("json: clientID with a space", 'set:clientID="a b"', "credentials_json.clientID"),
    ("json: clientID with NUL", 'set:clientID="a\\u0000b"', "credentials_json.clientID"),
    ("json: clientID with RLO", 'set:clientID="a\\u202eb"', "credentials_json"),
    ("json: keyID 600 chars", f'set:keyID="{"k" * 600}"', "credentials_json.keyID"),
    ("json: given twice", 'set:client_id="x"', "credentials_json.clientID"),
]
for _label, _uri in BAD_TOKEN_URIS.items():
    CONFIG_CASES.append(
        (f"json: tokenURI {_label}", f"set:tokenURI={json.dumps(_uri)}", "credentials_json")
    )
for _label, _pem in BAD_PEMS.items():
    _field = "credentials_json" if _label == "over 64 KiB" else "credentials_json.privateKey"
    CONFIG_CASES.append(
        (f"json: privateKey {_label}", f"set:privateKey={json.dumps(_pem)}", _field)
    )
CONFIG_CASES += [
    ("file: a number", {"credentials_file_path": 5}, "credentials_file_path"),
    ("file: a list", {"credentials_file_path": ["/a"]}, "credentials_file_path"),
    ("file: an object", {"credentials_file_path": {"path": "/a"}}, "credentials_file_path"),
    ("file: empty", {"credentials_file_path": ""}, "credentials_file_path"),
    ("file: relative", {"credentials_file_path": "creds.json"}, "credentials_file_path"),
    ("file: missing", {"credentials_file_path": "/nonexistent/x.json"}, "credentials_file_path"),
    ("file: a directory", {"credentials_file_path": "/"}, "credentials_file_path"),
    ("file: /dev/zero", {"credentials_file_path": "/dev/zero"}, "credentials_file_path"),
    ("file: not JSON", {"credentials_file_path": "/proc/self/status"}, "credentials_file_path"),
    ("file: NUL in path", {"credentials_file_path": "/tmp/a\x00b.json"}, "credentials_file_path"),
    ("file: 5000 chars", {"credentials_file_path": "/" + "a" * 5000}, "credentials_file_path"),
    # confinement: SKYFLOW_CREDENTIALS_DIR/<mount path>/ only (issue 11, item 1)
    ("file: another unit's key", "file:../other/key.json", "credentials_file_path"),
    ("file: another unit's key by path", "outside:other/key.json", "credentials_file_path"),
    ("file: dot segment", "file:./key.json", "credentials_file_path"),
    ("file: symlink to another unit", "file:other.json", "credentials_file_path"),
    ("file: symlinked directory", "file:units/other/key.json", "credentials_file_path"),
    ("file: symlink to /dev/zero", "file:zero.json", "credentials_file_path"),
    ("file: a FIFO in its own directory", "file:fifo.json", "credentials_file_path"),
    ("file: a directory in its own directory", "file:dir.json", "credentials_file_path"),
    ("file: over 256 KiB", "file:big.json", "credentials_file_path"),
    ("file: garbled JSON", "file:garbled.json", "credentials_file_path"),
    ("file: nested past the parser", "file:nested.json", "credentials_file_path"),
    ("file: missing in its own directory", "file:none.json", "credentials_file_path"),
    # the token endpoint is allow-listed: no blind SSRF or port scan (issue 11, item 2)
    (
        "json: tokenURI off the allow-list",
        "set:tokenURI=" + json.dumps("https://169.254.169.254/v1/auth/sa/oauth/token"),
        "credentials_json.tokenURI",
    ),
    (
        "json: tokenURI allowed host, other port",
        "set:tokenURI=" + json.dumps("https://emulator.test:22/v1/auth/sa/oauth/token"),
        "credentials_json.tokenURI",
    ),
    (
        "json: tokenURI allowed host as a suffix",
        "set:tokenURI=" + json.dumps("https://emulator.test.evil.example/v1/auth/sa/oauth/token"),
        "credentials_json.tokenURI",
    ),
    ("both sources", "both", "credentials_json"),
    ("description: a list", {"description": ["a"]}, "description"),
    ("description: an object", {"description": {"a": 1}}, "description"),
    ("description: null", {"description": None}, "description"),
    ("description: 1025 chars", {"description": "d" * 1025}, "description"),
    ("description: 2 MB", {"description": "d" * 2 * MB}, "description"),
    ("tags: a number", {"tags": 5}, "tags"),
    ("tags: an object", {"tags": {"a": 1}}, "tags"),
    ("tags: a number item", {"tags": [1]}, "tags"),
    ("tags: a null item", {"tags": [None]}, "tags"),
    ("tags: 33 tags", {"tags": [f"t{i}" for i in range(33)]}, "tags"),
    ("tags: 65 chars", {"tags": ["t" * 65]}, "tags"),
    ("tags: newline", {"tags": ["a\nb"]}, "tags"),
    ("tags: NUL", {"tags": ["a\x00b"]}, "tags"),
    ("tags: space", {"tags": ["a b"]}, "tags"),
    ("tags: DEL", {"tags": ["a\x7fb"]}, "tags"),
    ("tags: RTL override", {"tags": ["evil\u202etxt.exe"]}, "tags"),
    ("tags: 2 MB string", {"tags": "t" * 2 * MB}, "tags"),
    ("validate: maybe", {"validate_credentials": "maybe"}, "validate_credentials"),
    ("validate: 2", {"validate_credentials": 2}, "validate_credentials"),
    ("validate: a list", {"validate_credentials": [True]}, "validate_credentials"),
    ("validate: null", {"validate_credentials": None}, "validate_credentials"),
    ("unknown: credentials", {"credentials": "{}"}, "credentials"),
    ("unknown: privateKey", {"privateKey": "x"}, "privateKey"),
    ("unknown: upper case", {"DESCRIPTION": "x"}, "DESCRIPTION"),
    ("unknown: trailing space", {"description ": "x"}, "description "),
    ("unknown: emoji", {"\U0001f600": "x"}, "\U0001f600"),
    ("unknown: 1000 chars", {"f" * 1000: "x"}, "f" * 1000),
]


def resolve_config_case(engine: Engine, data: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    if data == "both":
        return {
            "credentials_json": json.dumps(engine.credentials),
            "credentials_file_path": "/tmp/creds.json",
        }
    action, _, rest = data.partition(":")
    if action == "file":
        return {"credentials_file_path": f"{engine.own_dir}/{rest}"}
    if action == "outside":
        return {"credentials_file_path": str(engine.credentials_dir / "skyflow" / rest)}
    if action == "drop":
        return {"credentials_json": _creds_with(engine.credentials, **{rest: _DROP})}
    key, _, raw = rest.partition("=")
    return {"credentials_json": _creds_with(engine.credentials, **{key: json.loads(raw)})}


@pytest.mark.parametrize(
    ("data", "field"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_config_refuses(engine: Engine, data: dict[str, Any] | str, field: str) -> None:
    assert_refused(engine, "config", resolve_config_case(engine, data), field)


def test_config_refuses_credentials_as_text_too(engine: Engine) -> None:
    """The same bad credentials given as JSON text rather than an object."""
    bad = _creds_with(engine.credentials, tokenURI="http://insecure.example/token")
    assert_refused(engine, "config", {"credentials_json": json.dumps(bad)}, "credentials_json")


# ------------------------------------------------------------------------ table: roles


ROLE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("role_ids: empty list", {"role_ids": []}, "role_ids"),
    ("role_ids: empty text", {"role_ids": ""}, "role_ids"),
    ("role_ids: only commas", {"role_ids": " , ,"}, "role_ids"),
    ("role_ids: a number", {"role_ids": 5}, "role_ids"),
    ("role_ids: an object", {"role_ids": {"a": 1}}, "role_ids"),
    ("role_ids: null", {"role_ids": None}, "role_ids"),
    ("role_ids: a number item", {"role_ids": [5]}, "role_ids"),
    ("role_ids: a nested list", {"role_ids": [["a"]]}, "role_ids"),
    ("role_ids: a space", {"role_ids": ["a b"]}, "role_ids"),
    ("role_ids: a slash", {"role_ids": ["a/b"]}, "role_ids"),
    ("role_ids: a scope injection", {"role_ids": ["a role:admin"]}, "role_ids"),
    ("role_ids: RTL mark", {"role_ids": ["role\u200f"]}, "role_ids"),
    ("role_ids: emoji", {"role_ids": ["\U0001f600"]}, "role_ids"),
    ("role_ids: NUL", {"role_ids": ["a\x00"]}, "role_ids"),
    ("role_ids: Cyrillic", {"role_ids": ["r\u043ele"]}, "role_ids"),
    ("role_ids: 129 chars", {"role_ids": ["r" * 129]}, "role_ids"),
    ("role_ids: repeated", {"role_ids": ["a", "a"]}, "role_ids"),
    ("role_ids: 65 IDs", {"role_ids": [f"r{i}" for i in range(65)]}, "role_ids"),
    ("role_ids: 10,000 IDs", {"role_ids": [f"r{i}" for i in range(10_000)]}, "role_ids"),
    (
        "role_ids: 10,000 as text",
        {"role_ids": ",".join(f"r{i}" for i in range(10_000))},
        "role_ids",
    ),
    ("role_ids: 2 MB text", {"role_ids": "r" * 2 * MB}, "role_ids"),
    ("description: a list", {"description": ["a"]}, "description"),
    ("description: 1025 chars", {"description": "d" * 1025}, "description"),
    ("description: 2 MB", {"description": "d" * 2 * MB}, "description"),
    ("tags: 33 tags", {"tags": [f"t{i}" for i in range(33)]}, "tags"),
    ("tags: a comma inside", {"tags": ["a,b", "c"] * 17}, "tags"),
    ("tags: tab", {"tags": ["a\tb"]}, "tags"),
    ("tags: DEL", {"tags": ["a\x7fb"]}, "tags"),
    ("tags: RTL override", {"tags": ["evil\u202etxt.exe"]}, "tags"),
    ("min_remaining_ttl: negative", {"min_remaining_ttl": -1}, "min_remaining_ttl"),
    ("min_remaining_ttl: -5m", {"min_remaining_ttl": "-5m"}, "min_remaining_ttl"),
    ("min_remaining_ttl: the lifetime", {"min_remaining_ttl": 3600}, "min_remaining_ttl"),
    ("min_remaining_ttl: 61m", {"min_remaining_ttl": "61m"}, "min_remaining_ttl"),
    ("min_remaining_ttl: 1e300", {"min_remaining_ttl": 1e300}, "min_remaining_ttl"),
    ("min_remaining_ttl: 10**30", {"min_remaining_ttl": 10**30}, "min_remaining_ttl"),
    ("min_remaining_ttl: 1e3 text", {"min_remaining_ttl": "1e3"}, "min_remaining_ttl"),
    ("min_remaining_ttl: NaN text", {"min_remaining_ttl": "NaN"}, "min_remaining_ttl"),
    ("min_remaining_ttl: a boolean", {"min_remaining_ttl": True}, "min_remaining_ttl"),
    ("min_remaining_ttl: a list", {"min_remaining_ttl": [60]}, "min_remaining_ttl"),
    ("min_remaining_ttl: words", {"min_remaining_ttl": "ten minutes"}, "min_remaining_ttl"),
    ("cache_tokens: 2", {"cache_tokens": 2}, "cache_tokens"),
    ("cache_tokens: yes", {"cache_tokens": "yes"}, "cache_tokens"),
    ("cache_tokens: empty", {"cache_tokens": ""}, "cache_tokens"),
    ("cache_tokens: null", {"cache_tokens": None}, "cache_tokens"),
    ("cache_tokens: a list", {"cache_tokens": [True]}, "cache_tokens"),
    ("ctx_mode: empty", {"ctx_mode": ""}, "ctx_mode"),
    ("ctx_mode: upper case", {"ctx_mode": "FREE"}, "ctx_mode"),
    ("ctx_mode: unknown", {"ctx_mode": "strict"}, "ctx_mode"),
    ("ctx_mode: NUL", {"ctx_mode": "free\x00"}, "ctx_mode"),
    ("ctx_mode: RTL mark", {"ctx_mode": "fr\u200fee"}, "ctx_mode"),
    ("ctx_mode: a list", {"ctx_mode": ["free"]}, "ctx_mode"),
    ("ctx_mode: a number", {"ctx_mode": 1}, "ctx_mode"),
    ("allowed_ctx_keys: a space", {"allowed_ctx_keys": ["a b"]}, "allowed_ctx_keys"),
    ("allowed_ctx_keys: a dash", {"allowed_ctx_keys": ["a-b"]}, "allowed_ctx_keys"),
    ("allowed_ctx_keys: Cyrillic", {"allowed_ctx_keys": ["\u043a\u043b"]}, "allowed_ctx_keys"),
    ("allowed_ctx_keys: emoji", {"allowed_ctx_keys": ["\U0001f600"]}, "allowed_ctx_keys"),
    ("allowed_ctx_keys: newline", {"allowed_ctx_keys": ["a\nb"]}, "allowed_ctx_keys"),
    (
        "allowed_ctx_keys: 65 keys",
        {"allowed_ctx_keys": [f"k{i}" for i in range(65)]},
        "allowed_ctx_keys",
    ),
    ("allowed_ctx_keys: 1 MB key", {"allowed_ctx_keys": ["k" * MB]}, "allowed_ctx_keys"),
    ("allowed_ctx_keys: an object", {"allowed_ctx_keys": {"a": 1}}, "allowed_ctx_keys"),
    ("required_ctx_keys: a dot", {"required_ctx_keys": ["a.b"]}, "required_ctx_keys"),
    ("required_ctx_keys: 1 MB key", {"required_ctx_keys": ["k" * MB]}, "required_ctx_keys"),
    (
        "required_ctx_keys: not allowed",
        {"ctx_mode": "restricted", "allowed_ctx_keys": ["a"], "required_ctx_keys": ["b"]},
        "required_ctx_keys",
    ),
    (
        "required_ctx_keys: with ctx_mode none",
        {"ctx_mode": "none", "required_ctx_keys": ["a"]},
        "required_ctx_keys",
    ),
    ("ctx_template: not JSON", {"ctx_template": "{user: x}"}, "ctx_template"),
    ("ctx_template: text of a list", {"ctx_template": "[1]"}, "ctx_template"),
    ("ctx_template: deeply nested text", {"ctx_template": "[" * 60_000}, "ctx_template"),
    ("ctx_template: a number", {"ctx_template": 5}, "ctx_template"),
    ("ctx_template: a list", {"ctx_template": ["a"]}, "ctx_template"),
    (
        "ctx_template: a bad key",
        {"ctx_template": {"a b": "{{identity.entity.id}}"}},
        "ctx_template",
    ),
    ("ctx_template: a number value", {"ctx_template": {"k": 5}}, "ctx_template"),
    ("ctx_template: an empty value", {"ctx_template": {"k": ""}}, "ctx_template"),
    ("ctx_template: no placeholder", {"ctx_template": {"k": "static"}}, "ctx_template"),
    (
        "ctx_template: unknown placeholder",
        {"ctx_template": {"k": "{{identity.entity.password}}"}},
        "ctx_template",
    ),
    (
        "ctx_template: groups not alone",
        {"ctx_template": {"k": "{{identity.groups.names}} x"}},
        "ctx_template",
    ),
    (
        "ctx_template: 65 keys",
        {"ctx_template": {f"k{i}": "{{identity.entity.id}}" for i in range(65)}},
        "ctx_template",
    ),
    (
        "ctx_template: 1 MB value",
        {"ctx_template": {"k": "{{identity.entity.id}}" + "x" * MB}},
        "ctx_template",
    ),
    (
        "ctx_template: also allowed",
        {
            "ctx_mode": "restricted",
            "allowed_ctx_keys": ["user"],
            "ctx_template": {"user": "{{identity.entity.id}}"},
        },
        "ctx_template",
    ),
    ("unknown: role_id", {"role_id": "a"}, "role_id"),
    ("unknown: roleIds", {"roleIds": ["a"]}, "roleIds"),
    ("unknown: ttl", {"ttl": "1h"}, "ttl"),
    ("unknown: RTL", {"\u202erole_ids": ["a"]}, "\u202erole_ids"),
]


@pytest.mark.parametrize(
    ("data", "field"), [c[1:] for c in ROLE_CASES], ids=[c[0] for c in ROLE_CASES]
)
def test_role_update_refuses(engine: Engine, data: dict[str, Any], field: str) -> None:
    assert_refused(engine, "roles/r", data, field)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"description": "no role IDs"}, "role_ids"),
        ({"role_ids": ["ok"], "ctx_mode": "sometimes"}, "ctx_mode"),
        ({"role_ids": ["ok"], "bogus": 1}, "bogus"),
    ],
    ids=["without role_ids", "bad ctx_mode", "unknown field"],
)
def test_role_create_refuses(engine: Engine, data: dict[str, Any], field: str) -> None:
    assert_refused(engine, "roles/fresh", data, field)
    assert engine.read("roles/fresh").status == 404


@pytest.mark.parametrize("length", [129, 4096])
def test_a_role_name_over_the_limit_is_refused_naming_it(engine: Engine, length: int) -> None:
    """Not a 500 from the existence check: a 400 naming ``name``, nothing stored."""
    assert_refused(engine, "roles/" + "n" * length, {"role_ids": ["ok"]}, "name")


def test_a_name_in_the_body_does_not_retarget_the_write(engine: Engine) -> None:
    outcome = engine.write("roles/r", {"name": "other", "description": "the baseline"})
    assert outcome.status == 200
    assert outcome.data["name"] == "r"
    assert engine.read("roles/other").status == 404


# ------------------------------------------------------------------------ table: creds


CREDS_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("a number", "r", {"ctx": 5}, "ctx"),
    ("a boolean", "r", {"ctx": True}, "ctx"),
    ("a list", "r", {"ctx": ["a"]}, "ctx"),
    ("null", "r", {"ctx": None}, "ctx"),
    ("key with a space", "r", {"ctx": {"a b": 1}}, "ctx"),
    ("key with a dash", "r", {"ctx": {"a-b": 1}}, "ctx"),
    ("empty key", "r", {"ctx": {"": 1}}, "ctx"),
    ("Cyrillic key", "r", {"ctx": {"\u043a": 1}}, "ctx"),
    ("emoji key", "r", {"ctx": {"\U0001f600": 1}}, "ctx"),
    ("key with a newline", "r", {"ctx": {"k\n": 1}}, "ctx"),
    ("key with NUL", "r", {"ctx": {"k\x00": 1}}, "ctx"),
    ("key with RTL mark", "r", {"ctx": {"k\u200f": 1}}, "ctx"),
    ("nested 9 deep", "r", {"ctx": {"k": [[[[[[[[["x"]]]]]]]]]}}, "ctx"),
    ("9 KiB string", "r", {"ctx": "c" * 9 * 1024}, "ctx"),
    ("9 KiB map", "r", {"ctx": {"k": "c" * 9 * 1024}}, "ctx"),
    ("2 MB string", "r", {"ctx": "c" * 2 * MB}, "ctx"),
    ("10,000 keys", "r", {"ctx": {f"k{i}": i for i in range(10_000)}}, "ctx"),
    ("restricted: a string", "restricted", {"ctx": "user1"}, "ctx"),
    ("restricted: key not allowed", "restricted", {"ctx": {"user": "u", "admin": True}}, "ctx"),
    ("restricted: required missing", "restricted", {"ctx": {"tenant": "t"}}, "ctx"),
    ("restricted: no ctx", "restricted", {}, "ctx"),
    ("none: a string", "noctx", {"ctx": "user1"}, "ctx"),
    ("none: a map", "noctx", {"ctx": {"user": "u"}}, "ctx"),
    ("unknown: context", "r", {"context": "x"}, "context"),
    ("unknown: role_ids", "r", {"role_ids": ["admin"]}, "role_ids"),
    ("unknown: ttl", "r", {"ttl": 60}, "ttl"),
    ("role name of 129 characters", "n" * 129, {}, "name"),
    ("role name of 4096 characters", "n" * 4096, {"ctx": "x"}, "name"),
]


@pytest.mark.parametrize(
    ("role", "data", "field"),
    [c[1:] for c in CREDS_CASES],
    ids=[c[0] for c in CREDS_CASES],
)
def test_creds_refuses(engine: Engine, role: str, data: dict[str, Any], field: str) -> None:
    assert_refused(engine, f"creds/{role}", data, field)


def test_creds_by_get_refuses_a_huge_query_ctx(engine: Engine) -> None:
    before, calls = engine.snapshot(), engine.token_calls()
    outcome = engine.read("creds/r", {"ctx": "q" * 9 * 1024})
    check_refusal(engine, outcome, "ctx", before, calls)


def test_unknown_role_is_a_400_not_a_crash(engine: Engine) -> None:
    outcome = engine.read("creds/does-not-exist")
    assert outcome.status == 400
    assert "does-not-exist" in " ".join(outcome.errors)


# ------------------------------------------------------------------ property tests

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Text the host can deliver: OpenBao's JSON decoder replaces lone surrogates with U+FFFD.
HOST_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=64)
NON_STRINGS = (
    st.none()
    | st.lists(JSON_SCALARS, max_size=3)
    | st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=3)
)
NON_LISTS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.dictionaries(st.text(max_size=5), JSON_SCALARS, min_size=1, max_size=3)
)
# Not whitespace either: list items are trimmed, so a trailing blank would be dropped.
BAD_IDENT_CHARS = st.characters(
    exclude_categories=["Cs"],
    exclude_characters="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-,",
).filter(lambda c: not c.isspace())


def _bad_identifier(alphabet: str) -> st.SearchStrategy[str]:
    """Identifiers with at least one character outside ``alphabet`` (and not blank)."""
    good = st.text(st.sampled_from(alphabet), max_size=6)
    return (
        st.tuples(good, BAD_IDENT_CHARS.filter(lambda c: c not in alphabet), good)
        .map("".join)
        .filter(lambda s: s.strip() != "" and "," not in s)
    )


ROLE_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"
CTX_KEY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"

INVALID_ROLE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "role_ids": NON_LISTS
    | st.lists(_bad_identifier(ROLE_ID_CHARS), min_size=1, max_size=3)
    | st.lists(
        st.text(st.sampled_from(ROLE_ID_CHARS), min_size=129, max_size=200), min_size=1, max_size=2
    )
    | st.lists(st.integers() | st.none() | st.booleans(), min_size=1, max_size=3),
    "description": NON_STRINGS | st.text(min_size=1025, max_size=1100),
    "tags": NON_LISTS
    | st.lists(st.text(st.sampled_from("abc"), min_size=65, max_size=80), min_size=1, max_size=2)
    | st.lists(
        st.sampled_from(["a\x00b", "b\x1fc", "c d", "e\tf", "g\nh", "i,j"]),
        min_size=1,
        max_size=3,
    ),
    "min_remaining_ttl": st.integers(max_value=-1)
    | st.integers(min_value=3600, max_value=10**12)
    | st.text(st.sampled_from("abcxyz!?-"), min_size=1, max_size=8)
    | st.booleans()
    | st.lists(st.integers(), max_size=2),
    "cache_tokens": st.integers().filter(lambda i: i not in (0, 1))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8).filter(
        lambda s: s.strip().lower() not in ("1", "t", "true", "0", "f", "false")
    )
    | st.lists(st.booleans(), max_size=2)
    | st.none(),
    "ctx_mode": HOST_TEXT.filter(lambda s: s not in ("free", "restricted", "none"))
    | st.lists(st.sampled_from(["free", "none"]), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
    | st.none(),
    "allowed_ctx_keys": NON_LISTS
    | st.lists(_bad_identifier(CTX_KEY_CHARS), min_size=1, max_size=3),
    "required_ctx_keys": NON_LISTS
    | st.lists(_bad_identifier(CTX_KEY_CHARS), min_size=1, max_size=3),
    "ctx_template": st.integers()
    | st.lists(st.text(max_size=3), max_size=2)
    | st.dictionaries(
        _bad_identifier(CTX_KEY_CHARS), st.just("{{identity.entity.id}}"), min_size=1, max_size=2
    )
    | st.dictionaries(
        st.sampled_from(["k", "user"]),
        HOST_TEXT.filter(lambda s: "{{" not in s),
        min_size=1,
        max_size=2,
    )
    | st.dictionaries(
        st.sampled_from(["k"]),
        st.integers() | st.none() | st.lists(st.text(max_size=2), max_size=2),
        min_size=1,
    ),
}


INVALID_CONFIG_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "description": INVALID_ROLE_FIELDS["description"],
    "tags": INVALID_ROLE_FIELDS["tags"],
    "validate_credentials": INVALID_ROLE_FIELDS["cache_tokens"],
    "credentials_file_path": st.integers()
    | st.lists(st.text(max_size=3), max_size=2)
    | HOST_TEXT.filter(lambda s: not s.startswith("/"))
    | HOST_TEXT.map(lambda s: "/nonexistent/" + s.replace("/", "_")),
    "credentials_json": st.integers()
    | st.booleans()
    | st.none()
    | st.lists(JSON_SCALARS, max_size=3)
    | HOST_TEXT
    | JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps)
    | st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6),
}


INVALID_FIELDS: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    **{("roles/r", field): values for field, values in INVALID_ROLE_FIELDS.items()},
    **{("config", field): values for field, values in INVALID_CONFIG_FIELDS.items()},
}


@PROPERTY
@pytest.mark.parametrize(
    ("path", "field"),
    sorted(INVALID_FIELDS),
    ids=[f"{path.split('/')[0]}-{field}" for path, field in sorted(INVALID_FIELDS)],
)
@given(data=st.data())
def test_property_invalid_fields_are_refused(
    engine_module: Engine, path: str, field: str, data: st.DataObject
) -> None:
    with baseline_kept(engine_module) as engine:
        value = data.draw(INVALID_FIELDS[path, field], label=field)
        assert_refused(engine, path, {field: value}, field)


CREDENTIAL_KEYS = ("clientID", "keyID", "tokenURI", "privateKey", "clientName")


@PROPERTY
@given(
    key=st.sampled_from(CREDENTIAL_KEYS),
    value=JSON_VALUES.filter(lambda v: not isinstance(v, str) or not v.startswith("https://")),
    as_text=st.booleans(),
)
def test_property_a_corrupted_credential_field_is_named(
    engine_module: Engine, key: str, value: Any, as_text: bool
) -> None:
    """Replace one field of valid credentials with any JSON value: refused, naming it --
    unless the value happens to be acceptable for that field (a plain identifier or name)."""
    with baseline_kept(engine_module) as engine:
        creds = _creds_with(engine.credentials, **{key: value})
        payload = json.dumps(creds) if as_text else creds
        before, calls = engine.snapshot(), engine.token_calls()
        outcome = engine.write(
            "config", {"credentials_json": payload, "validate_credentials": False}
        )
        if outcome.status == 200:
            # only identifiers and the client name may take arbitrary text
            assert key in ("clientID", "keyID", "clientName"), outcome.data
            assert isinstance(value, str) or (key == "clientName" and value is None)
            restored = engine.write("config", {"credentials_json": json.dumps(engine.credentials)})
            assert restored.status == 200
            return
        check_refusal(engine, outcome, f"credentials_json.{key}", before, calls)


@PROPERTY
@given(
    name=HOST_TEXT.filter(lambda s: s not in ROLE_FIELDS),
    value=JSON_SCALARS,
)
def test_property_unknown_fields_are_refused(engine_module: Engine, name: str, value: Any) -> None:
    with baseline_kept(engine_module) as engine:
        assert_refused(engine, "roles/r", {name: value}, name)


@PROPERTY
@given(text=HOST_TEXT)
def test_property_free_text_round_trips_or_is_refused(engine_module: Engine, text: str) -> None:
    """A description may hold any Unicode the host can deliver; it reads back unchanged."""
    with baseline_kept(engine_module) as engine:
        outcome = engine.write("roles/r", {"description": text})
        assert outcome.status == 200, outcome.errors
        assert engine.read("roles/r").data["description"] == text
        assert engine.write("roles/r", {"description": "the baseline"}).status == 200


def _ctx_is_valid(ctx: Any) -> bool:
    """An oracle independent of the engine: what Skyflow accepts as a ctx."""
    if isinstance(ctx, str):
        return len(json.dumps(ctx, ensure_ascii=False).encode()) <= 8 * 1024
    if not isinstance(ctx, dict):
        return False
    if not all(isinstance(k, str) and k and all(c in CTX_KEY_CHARS for c in k) for k in ctx):
        return False

    def depth(value: Any) -> int:
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    size = len(json.dumps(ctx, ensure_ascii=False, separators=(",", ":")).encode())
    return depth(ctx) <= 8 and size <= 8 * 1024


CTX_VALUES = (
    JSON_VALUES
    | st.dictionaries(
        st.text(st.sampled_from(CTX_KEY_CHARS), min_size=1, max_size=8), JSON_VALUES, max_size=4
    )
    | st.dictionaries(HOST_TEXT, HOST_TEXT, max_size=3)
)


@PROPERTY
@given(ctx=CTX_VALUES)
def test_property_ctx_is_refused_or_reaches_skyflow_unchanged(
    engine_module: Engine, ctx: Any
) -> None:
    """Any ctx is either refused naming ``ctx`` or put into the token exactly as sent."""
    with baseline_kept(engine_module) as engine:
        before, calls = engine.snapshot(), engine.token_calls()
        outcome = engine.write("creds/r", {"ctx": ctx})
        if not _ctx_is_valid(ctx):
            check_refusal(engine, outcome, "ctx", before, calls)
            return
        assert outcome.status == 200, outcome.errors
        claims = jwt.decode(outcome.data["access_token"], options={"verify_signature": False})
        blank = (isinstance(ctx, str) and not ctx.strip()) or ctx == {}
        if blank:
            assert "ctx" not in claims
        else:
            assert claims["ctx"] == ctx


# ------------------------------------------------------------------ on a real OpenBao


@dataclass
class Target:
    """A configured mount on the real server and what must survive every hostile case."""

    stack: Stack
    mount: str

    def state(self) -> dict[str, Any]:
        root = self.stack.client()
        return {
            "config": root.read(f"{self.mount}/config")["data"],
            "role": root.read(f"{self.mount}/roles/r")["data"],
        }

    def restore(self) -> None:
        self.stack.client().write(
            f"{self.mount}/roles/r",
            {**ROLE_DEFAULTS, "role_ids": ["base-role"], "description": "the baseline"},
        )


@pytest.fixture(scope="module")
def target_module(stack: Stack) -> Target:
    mount = stack.mount("skyflow/hostile", roles={"r": ["base-role"]})
    running = Target(stack, mount)
    running.restore()
    return running


@pytest.fixture
def target(target_module: Target) -> Iterator[Target]:
    """The module's mount, put back to the baseline when a case changed it."""
    before = target_module.state()
    yield target_module
    if target_module.state() != before:
        target_module.restore()


def _raw(target: Target, method: str, path: str, body: str, timeout: float) -> httpx.Response:
    """Send a raw JSON body: escapes such as lone surrogates reach OpenBao as typed."""
    bao = target.stack.bao
    with httpx.Client(base_url=f"{bao.addr}/v1/", timeout=timeout) as http:
        return http.request(
            method,
            f"{target.mount}/{path}",
            content=body.encode(),
            headers={"X-Vault-Token": bao.root_token, "Content-Type": "application/json"},
        )


def _credentials_body(token_uri: str, private_key: str) -> str:
    """A config write whose credentials have every key, with the given token URI and key."""
    credentials = {"clientID": "c", "keyID": "k", "tokenURI": token_uri, "privateKey": private_key}
    return json.dumps({"credentials_json": credentials})


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# (id, method, path, raw JSON body, field the message must name, or HOST for OpenBao's own)
HOST = "<openbao>"
SERVER_CASES: list[tuple[str, str, str, str, str]] = [
    (
        "config: 1 MB credentials",
        "PUT",
        "config",
        json.dumps({"credentials_json": "x" * MB}),
        "credentials_json",
    ),
    (
        "config: JSON array text",
        "PUT",
        "config",
        json.dumps({"credentials_json": "[1]"}),
        "credentials_json",
    ),
    (
        "config: http token URI",
        "PUT",
        "config",
        _credentials_body("http://x/t", BAD_PEMS["rsa 1024"]),
        "credentials_json.tokenURI",
    ),
    (
        "config: invalid PEM",
        "PUT",
        "config",
        _credentials_body("https://x/t", BAD_PEMS["truncated body"]),
        "credentials_json.privateKey",
    ),
    (
        "config: NUL in file path",
        "PUT",
        "config",
        '{"credentials_file_path": "/tmp/a\\u0000b.json"}',
        "credentials_file_path",
    ),
    (
        "config: deeply nested credentials text",
        "PUT",
        "config",
        json.dumps({"credentials_json": "[" * 60_000}),
        "credentials_json",
    ),
    ("config: unknown field", "PUT", "config", '{"private_key": "x"}', "private_key"),
    (
        "role: 10,000 role IDs as text",
        "PUT",
        "roles/r",
        json.dumps({"role_ids": ",".join(f"r{i}" for i in range(10_000))}),
        "role_ids",
    ),
    (
        "role: 10,000 role IDs as a list",
        "PUT",
        "roles/r",
        json.dumps({"role_ids": [f"r{i}" for i in range(10_000)]}),
        HOST,
    ),
    (
        "role: 2 MB description",
        "PUT",
        "roles/r",
        json.dumps({"description": "d" * 2 * MB}),
        "description",
    ),
    (
        "role: RTL override in a role ID",
        "PUT",
        "roles/r",
        '{"role_ids": ["adm\\u202enimda"]}',
        "role_ids",
    ),
    (
        "role: a tag of 65 emoji",
        "PUT",
        "roles/r",
        json.dumps({"tags": ["\U0001f600" * 65]}),
        "tags",
    ),
    (
        "role: lone surrogate in a role ID",
        "PUT",
        "roles/r",
        '{"role_ids": ["a\\ud800"]}',
        "role_ids",
    ),
    (
        "role: 1 MB allowed ctx key",
        "PUT",
        "roles/r",
        json.dumps({"allowed_ctx_keys": ["k" * MB]}),
        "allowed_ctx_keys",
    ),
    (
        "role: 1 MB ctx template",
        "PUT",
        "roles/r",
        json.dumps({"ctx_template": {"k": "{{identity.entity.id}}" + "x" * MB}}),
        "ctx_template",
    ),
    (
        "role: deeply nested template text",
        "PUT",
        "roles/r",
        json.dumps({"ctx_template": "[" * 60_000}),
        "ctx_template",
    ),
    ("role: deeply nested unknown field", "PUT", "roles/r", '{"zz": ' + _deep(2000) + "}", "zz"),
    ("creds: deeply nested ctx", "PUT", "creds/r", '{"ctx": {"k": ' + _deep(2000) + "}}", "ctx"),
    ("creds: bad ctx key", "PUT", "creds/r", '{"ctx": {"a b": 1}}', "ctx"),
    ("creds: NUL in a ctx key", "PUT", "creds/r", '{"ctx": {"k\\u0000": 1}}', "ctx"),
    ("creds: 2 MB ctx", "PUT", "creds/r", json.dumps({"ctx": "c" * 2 * MB}), "ctx"),
    ("creds: body not an object", "PUT", "creds/r", "[1, 2]", HOST),
    # A name the existence check cannot take: OpenBao would turn an error there into a 500.
    ("role: a name of 129 characters", "PUT", "roles/" + "n" * 129, '{"role_ids": ["a"]}', "name"),
    ("creds: a name of 129 characters", "GET", "creds/" + "n" * 129, "", "name"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [c[1:] for c in SERVER_CASES],
    ids=[c[0] for c in SERVER_CASES],
)
def test_server_refuses(
    stack: Stack, target: Target, method: str, path: str, body: str, field: str
) -> None:
    pid = stack.plugin_pid()
    before = target.state()
    response = _raw(target, method, path, body, 30.0)
    message = error_text(response)
    assert 400 <= response.status_code < 500, f"HTTP {response.status_code}: {message[:300]}"
    if field != HOST:
        assert f"'{field}" in message, f"the message does not name {field!r}: {message[:300]}"
    assert stack.plugin_pid() == pid, "the plugin process was replaced"
    assert target.state() == before, "a refused request changed what is stored"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"a\\ud800b"', "a\ufffdb"),
        ('"\\u202eevil\\u200f"', "\u202eevil\u200f"),
        ('"\\u0000nul"', "\x00nul"),
        ('"\\ud83d\\ude00 emoji"', "\U0001f600 emoji"),
    ],
    ids=["lone surrogate", "RTL marks", "NUL", "emoji pair"],
)
def test_server_free_text_round_trips(
    stack: Stack, target: Target, raw: str, expected: str
) -> None:
    """Odd Unicode in a description is stored as OpenBao delivers it (a lone surrogate
    becomes U+FFFD in OpenBao's JSON decoder) and reads back the same."""
    pid = stack.plugin_pid()
    response = _raw(target, "PUT", "roles/r", '{"description": ' + raw + "}", 30.0)
    assert response.status_code == 200, error_text(response)
    assert target.state()["role"]["description"] == expected
    assert (
        _raw(target, "PUT", "roles/r", '{"description": "the baseline"}', 30.0).status_code == 200
    )
    assert stack.plugin_pid() == pid


@pytest.mark.e2e
def test_server_refuses_a_fifo_as_credentials_file(
    stack: Stack, target: Target, tmp_path: Path
) -> None:
    """A credentials path that is not a regular file (a FIFO nobody writes to) must be refused
    at once, not block the request and a worker thread until the FIFO is written."""
    # in the mount's own directory, where file mode may read: the open itself is what is tested
    fifo = stack.credentials_dir / target.mount / "creds.fifo"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    pid = stack.plugin_pid()
    before = target.state()
    started = time.monotonic()
    try:
        response: httpx.Response | None = _raw(
            target, "PUT", "config", json.dumps({"credentials_file_path": str(fifo)}), 5.0
        )
    except httpx.TimeoutException:
        response = None
    finally:
        # release a reader blocked on the FIFO, whatever happened
        with contextlib.suppress(OSError):
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"not json")
            os.close(fd)
    elapsed = time.monotonic() - started
    assert response is not None, (
        f"no answer within {elapsed:.1f} s: the request blocked on the FIFO"
    )
    assert 400 <= response.status_code < 500, error_text(response)
    assert "'credentials_file_path" in error_text(response)
    assert stack.plugin_pid() == pid
    assert target.state() == before
