"""Parsing and validation of Skyflow service-account credentials."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from skyflow_vault_plugin.skyflow.credentials import (
    MAX_CREDENTIALS_BYTES,
    CredentialsFileError,
    ServiceAccount,
    TokenHosts,
    credentials_dir_for,
    load_credentials_file,
    parse_credentials,
    token_endpoint,
)
from skyflow_vault_plugin.skyflow.errors import CredentialsError, InvalidInput, SkyflowError
from tests.skyflow.conftest import snake_case

TOKEN_URI = "https://manage.skyflowapis.test/v1/auth/sa/oauth/token"


def _pem(key: Any, fmt: serialization.PrivateFormat) -> str:
    pem: bytes = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return pem.decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pkcs8(rsa_key: rsa.RSAPrivateKey) -> str:
    return _pem(rsa_key, serialization.PrivateFormat.PKCS8)


@pytest.fixture
def creds(pkcs8: str) -> dict[str, Any]:
    return {
        "clientID": "c0ffee0123456789",
        "clientName": "test account",
        "tokenURI": TOKEN_URI,
        "keyID": "k3y0123456789",
        "privateKey": pkcs8,
    }


def _fails(raw: Any, field: str, **kwargs: Any) -> CredentialsError:
    with pytest.raises(CredentialsError) as info:
        parse_credentials(raw, **kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    return info.value


def _assert_account(account: ServiceAccount, rsa_key: rsa.RSAPrivateKey) -> None:
    assert account.client_id == "c0ffee0123456789"
    assert account.client_name == "test account"
    assert account.key_id == "k3y0123456789"
    assert account.token_uri == TOKEN_URI
    assert account.private_key.private_numbers() == rsa_key.private_numbers()


def test_camel_case_mapping(creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey) -> None:
    _assert_account(parse_credentials(creds), rsa_key)


def test_snake_case_mapping(creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey) -> None:
    _assert_account(parse_credentials(snake_case(creds)), rsa_key)


@pytest.mark.parametrize("indent", [None, 2, "\t"])
def test_json_text_compact_or_pretty(
    creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey, indent: Any
) -> None:
    text = json.dumps(creds, indent=indent)
    _assert_account(parse_credentials(text), rsa_key)
    _assert_account(parse_credentials(text.encode()), rsa_key)


def test_pem_with_literal_newlines_in_json(
    creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey
) -> None:
    # some tools paste the PEM unescaped; the SDK tolerates it and so do we
    text = json.dumps(creds).replace("\\n", "\n")
    _assert_account(parse_credentials(text), rsa_key)


def test_client_name_is_optional(creds: dict[str, Any]) -> None:
    del creds["clientName"]
    assert parse_credentials(creds).client_name is None


def test_pkcs1_key(creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey) -> None:
    creds["privateKey"] = _pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert creds["privateKey"].startswith("-----BEGIN RSA " + "PRIVATE KEY-----")
    _assert_account(parse_credentials(creds), rsa_key)


@pytest.mark.parametrize("key", ["clientID", "keyID", "tokenURI", "privateKey"])
def test_missing_required_field(creds: dict[str, Any], key: str) -> None:
    del creds[key]
    error = _fails(creds, f"credentials_json.{key}")
    assert "required" in str(error)


@pytest.mark.parametrize("key", ["clientID", "keyID", "tokenURI", "privateKey", "clientName"])
def test_wrong_type_names_field(creds: dict[str, Any], key: str) -> None:
    creds[key] = 12
    _fails(creds, f"credentials_json.{key}")


def test_snake_case_errors_name_the_key_as_written(creds: dict[str, Any]) -> None:
    snake = snake_case(creds)
    snake["token_uri"] = "http://insecure.test/token"
    _fails(snake, "credentials_json.token_uri")


def test_field_prefix(creds: dict[str, Any]) -> None:
    del creds["keyID"]
    _fails(creds, "config.credentials.keyID", field_prefix="config.credentials")


def test_blank_ids_refused(creds: dict[str, Any]) -> None:
    creds["clientID"] = "   "
    _fails(creds, "credentials_json.clientID")


def test_both_spellings_refused(creds: dict[str, Any]) -> None:
    creds["client_id"] = "other"
    _fails(creds, "credentials_json.clientID")


@pytest.mark.parametrize(
    "uri",
    [
        "http://manage.skyflowapis.test/v1/auth/sa/oauth/token",
        "/v1/auth/sa/oauth/token",
        "manage.skyflowapis.test/v1/auth/sa/oauth/token",
        "https://",
        "https:///v1/auth/sa/oauth/token",
        "https://user:pw@manage.skyflowapis.test/token",
        "https://manage.skyflowapis.test:notaport/token",
        "https://manage.skyflowapis.test:0/token",
        "ftp://manage.skyflowapis.test/token",
        "",
    ],
)
def test_token_uri_must_be_absolute_https(creds: dict[str, Any], uri: str) -> None:
    creds["tokenURI"] = uri
    _fails(creds, "credentials_json.tokenURI")


def test_token_uri_with_port_accepted(creds: dict[str, Any]) -> None:
    creds["tokenURI"] = "https://127.0.0.1:8443/v1/auth/sa/oauth/token"
    assert parse_credentials(creds).token_uri == creds["tokenURI"]


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        "-----BEGIN " + "PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n",
        "-----BEGIN RSA " + "PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n",
        "",
    ],
)
def test_garbage_pem_refused(creds: dict[str, Any], pem: str) -> None:
    creds["privateKey"] = pem
    _fails(creds, "credentials_json.privateKey")


def test_ec_key_refused(creds: dict[str, Any]) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    creds["privateKey"] = _pem(ec_key, serialization.PrivateFormat.PKCS8)
    error = _fails(creds, "credentials_json.privateKey")
    assert "RSA" in str(error)


def test_small_rsa_key_refused(creds: dict[str, Any]) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    creds["privateKey"] = _pem(small, serialization.PrivateFormat.PKCS8)
    _fails(creds, "credentials_json.privateKey")


def test_encrypted_key_refused(creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey) -> None:
    creds["privateKey"] = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    error = _fails(creds, "credentials_json.privateKey")
    assert "encrypted" in str(error)


def test_oversized_key_refused(creds: dict[str, Any]) -> None:
    creds["privateKey"] = "-----BEGIN " + "PRIVATE KEY-----\n" + "A" * 70_000
    _fails(creds, "credentials_json.privateKey")


@pytest.mark.parametrize("text", ["[]", "42", '"text"', "null", "true"])
def test_json_must_be_an_object(text: str) -> None:
    error = _fails(text, "credentials_json")
    assert "object" in str(error)


@pytest.mark.parametrize("text", ["{", "{'clientID': 1}", "", "   ", "\xff"])
def test_invalid_json(text: str) -> None:
    _fails(text, "credentials_json")


def test_invalid_utf8_bytes() -> None:
    _fails(b"\xff\xfe{", "credentials_json")


def test_errors_never_contain_the_key(creds: dict[str, Any], pkcs8: str) -> None:
    body_line = pkcs8.splitlines()[1]
    broken = dict(creds, tokenURI="http://x")
    cases: list[Any] = [broken, json.dumps(broken), json.dumps(creds)[:-5]]
    for raw in cases:
        with pytest.raises(CredentialsError) as info:
            parse_credentials(raw)
        assert body_line not in str(info.value)
        assert "PRIVATE KEY" not in str(info.value)


def test_error_tree(creds: dict[str, Any]) -> None:
    del creds["clientID"]
    with pytest.raises(CredentialsError) as info:
        parse_credentials(creds)
    assert isinstance(info.value, InvalidInput)
    assert isinstance(info.value, SkyflowError)
    assert isinstance(info.value, ValueError)


def test_repr_hides_the_key(creds: dict[str, Any], pkcs8: str) -> None:
    account = parse_credentials(creds)
    text = repr(account)
    assert "<redacted>" in text
    assert pkcs8.splitlines()[1] not in text
    assert "c0ffee0123456789" in text


def test_equality_follows_the_key(creds: dict[str, Any]) -> None:
    first = parse_credentials(creds)
    assert parse_credentials(json.dumps(creds)) == first
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    creds["privateKey"] = _pem(other, serialization.PrivateFormat.PKCS8)
    assert parse_credentials(creds) != first


@pytest.mark.parametrize(
    ("uri", "endpoint"),
    [
        (TOKEN_URI, "https://manage.skyflowapis.test/v1/auth/sa/oauth/token"),
        ("https://h.test:8443/other/path?q=1", "https://h.test:8443/v1/auth/sa/oauth/token"),
        ("https://h.test", "https://h.test/v1/auth/sa/oauth/token"),
    ],
)
def test_token_endpoint(uri: str, endpoint: str) -> None:
    assert token_endpoint(uri) == endpoint


def test_account_token_endpoint(creds: dict[str, Any]) -> None:
    creds["tokenURI"] = "https://h.test:8443/anything"
    assert parse_credentials(creds).token_endpoint == "https://h.test:8443/v1/auth/sa/oauth/token"


def test_load_credentials_file(
    tmp_path: Path, creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "creds.json"
    path.write_text(json.dumps(creds, indent=4))
    _assert_account(load_credentials_file(path, root=str(tmp_path)), rsa_key)
    _assert_account(load_credentials_file(str(path), root=str(tmp_path)), rsa_key)


def test_load_credentials_file_needs_absolute_path(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as info:
        load_credentials_file("relative/creds.json", root=str(tmp_path))
    assert info.value.field == "credentials_file_path"


@pytest.fixture
def units(tmp_path: Path, creds: dict[str, Any]) -> tuple[Path, Path]:
    """``<dir>/skyflow/insurance`` (empty) and ``<dir>/skyflow/lending`` (holding a key)."""
    insurance = tmp_path / "skyflow" / "insurance"
    lending = tmp_path / "skyflow" / "lending"
    insurance.mkdir(parents=True)
    lending.mkdir(parents=True)
    (lending / "key.json").write_text(json.dumps(creds))
    return insurance, lending


def test_credentials_dir_is_per_mount(tmp_path: Path) -> None:
    field = "credentials_file_path"
    assert credentials_dir_for(str(tmp_path), "skyflow/insurance/", field) == str(
        tmp_path / "skyflow" / "insurance"
    )
    with pytest.raises(CredentialsError, match="SKYFLOW_CREDENTIALS_DIR") as info:
        credentials_dir_for(None, "skyflow/insurance/", field)
    assert info.value.field == field
    for bad in ("", "/", "a/../b/", "./x/"):
        with pytest.raises(CredentialsError):
            credentials_dir_for(str(tmp_path), bad, field)


def test_another_units_key_file_is_refused(units: tuple[Path, Path]) -> None:
    insurance, lending = units
    for path in (
        lending / "key.json",  # straight
        f"{insurance}/../lending/key.json",  # dot-dot
        f"{insurance}/./../lending/key.json",
    ):
        with pytest.raises(CredentialsError) as info:
            load_credentials_file(path, root=str(insurance))
        assert info.value.field == "credentials_file_path"
        assert not isinstance(info.value, CredentialsFileError)  # refused before any I/O


def test_a_symlink_out_of_the_mounts_directory_is_refused(
    units: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    insurance, lending = units
    (insurance / "key.json").symlink_to(lending / "key.json")
    (insurance / "dir").symlink_to(lending)
    for path in (insurance / "key.json", insurance / "dir" / "key.json"):
        with pytest.raises(CredentialsFileError):
            load_credentials_file(path, root=str(insurance))
    assert "outside" in caplog.text


def test_a_symlink_inside_the_mounts_directory_is_followed(
    units: tuple[Path, Path], creds: dict[str, Any], rsa_key: rsa.RSAPrivateKey
) -> None:
    # the layout of a Kubernetes secret volume: key.json -> ..data/key.json
    insurance, _ = units
    data = insurance / "..2026_12_02"
    data.mkdir()
    (data / "key.json").write_text(json.dumps(creds))
    (insurance / "..data").symlink_to(data.name)
    (insurance / "key.json").symlink_to("..data/key.json")
    _assert_account(load_credentials_file(insurance / "key.json", root=str(insurance)), rsa_key)


def test_every_read_failure_is_one_generic_error(
    tmp_path: Path, creds: dict[str, Any], pkcs8: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No oracle: missing, unreadable, directory, FIFO, too large, bad JSON, bad key all
    read the same to the caller; the log says which, and never quotes the file."""
    root = tmp_path
    cases: dict[str, Path] = {"missing": root / "missing.json", "directory": root / "sub"}
    (root / "sub").mkdir()
    fifo = root / "fifo.json"
    os.mkfifo(fifo)  # opening it for reading must not block
    cases["fifo"] = fifo
    big = root / "big.json"
    big.write_bytes(b" " * (MAX_CREDENTIALS_BYTES + 1))
    cases["too large"] = big
    garbled = root / "garbled.json"
    garbled.write_text(json.dumps(creds)[:-3])
    cases["bad json"] = garbled
    wrong_type = root / "wrong.json"
    wrong_type.write_text(json.dumps(dict(creds, privateKey=42)))
    cases["key type"] = wrong_type
    bad_uri = root / "bad_uri.json"
    bad_uri.write_text(json.dumps(dict(creds, tokenURI="http://x")))
    cases["token uri"] = bad_uri
    if os.geteuid() != 0:  # root reads anything
        locked = root / "locked.json"
        locked.write_text("{}")
        locked.chmod(0)
        cases["unreadable"] = locked

    messages = set()
    for name, path in cases.items():
        with pytest.raises(CredentialsFileError) as info:
            load_credentials_file(path, root=str(root))
        assert info.value.field == "credentials_file_path", name
        messages.add(info.value.message.replace(info.value.reference, "REF"))
    assert len(messages) == 1, messages
    assert "plugin's log" in messages.pop()
    assert pkcs8.splitlines()[1] not in caplog.text
    assert creds["clientID"] not in caplog.text
    reasons = [getattr(record, "reason", "") for record in caplog.records]
    assert any("regular file" in reason for reason in reasons)
    assert any("larger than" in reason for reason in reasons)


def test_a_file_swapped_after_the_check_is_caught_on_the_descriptor(
    units: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """realpath saw a file inside the directory, then a symlink to another unit's key took
    its place: O_NOFOLLOW refuses to open it."""
    insurance, lending = units
    target = insurance / "key.json"
    target.write_text("{}")
    real_realpath = os.path.realpath

    def racing_realpath(path: str) -> str:
        resolved = real_realpath(path)
        if resolved == str(target):
            target.unlink()
            target.symlink_to(lending / "key.json")
        return resolved

    monkeypatch.setattr(os.path, "realpath", racing_realpath)
    with pytest.raises(CredentialsFileError):
        load_credentials_file(target, root=str(insurance))


def test_json_nested_beyond_the_parser_is_a_credentials_error() -> None:
    from skyflow_vault_plugin.skyflow.credentials import parse_credentials
    from skyflow_vault_plugin.skyflow.errors import CredentialsError

    with pytest.raises(CredentialsError) as info:
        parse_credentials('{"a":' * 100_000 + "1" + "}" * 100_000)
    assert info.value.field == "credentials_json"


# -- the token-host allow-list (SKYFLOW_ALLOWED_TOKEN_HOSTS) ------------------------------


def test_token_hosts_default_to_skyflows_own() -> None:
    hosts = TokenHosts.default()
    assert hosts.allows("manage.skyflowapis.com", 443)
    assert hosts.allows("MANAGE.skyflowapis.com", 443)
    assert hosts.allows("manage.skyflowapis-preview.com", 443)
    assert not hosts.allows("manage.skyflowapis.com", 8443)
    assert not hosts.allows("evil.example", 443)
    assert TokenHosts.from_env({}) == hosts
    assert TokenHosts.from_env({"SKYFLOW_ALLOWED_TOKEN_HOSTS": " "}) == hosts


def test_token_hosts_parse_ports_and_wildcards() -> None:
    hosts = TokenHosts.parse(" 127.0.0.1:8443 , *.vault.example ,api.example:443")
    assert hosts.allows("127.0.0.1", 8443)
    assert not hosts.allows("127.0.0.1", 443)
    assert hosts.allows("a.vault.example", 443)
    assert hosts.allows("a.b.vault.example", 443)
    assert not hosts.allows("vault.example", 443)  # the wildcard needs a subdomain
    assert not hosts.allows("evilvault.example", 443)
    assert not hosts.allows("a.vault.example.evil", 443)
    assert hosts.allows("api.example", 443)


@pytest.mark.parametrize(
    "text", [",", "host:port", "host:0", "host:70000", "a b", "-x.example", "*.", "[::1]:443"]
)
def test_bad_token_hosts_are_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ValueError, match="SKYFLOW_ALLOWED_TOKEN_HOSTS"):
        TokenHosts.parse(text)


def test_a_token_uri_off_the_list_is_refused_naming_it(creds: dict[str, Any]) -> None:
    hosts = TokenHosts.parse("manage.skyflowapis.test")
    assert parse_credentials(creds, allowed_hosts=hosts).token_uri == TOKEN_URI
    for uri in (
        "https://169.254.169.254/latest/meta-data",
        "https://manage.skyflowapis.test:8443/v1/auth/sa/oauth/token",
        "https://manage.skyflowapis.test.evil.example/v1/auth/sa/oauth/token",
        "https://10.0.0.7:22/",
    ):
        with pytest.raises(CredentialsError) as info:
            parse_credentials(dict(creds, tokenURI=uri), allowed_hosts=hosts)
        assert info.value.field == "credentials_json.tokenURI"
        assert "SKYFLOW_ALLOWED_TOKEN_HOSTS" in info.value.message
