"""Skyflow service-account credentials: parsing, validation and the token endpoint.

Skyflow issues a credentials JSON file with ``clientID``, ``clientName``, ``keyID``,
``tokenURI`` and ``privateKey`` (an RSA key in PEM). The official Python SDK also accepts the
snake_case spelling of those keys; so do we. Every problem raises :class:`CredentialsError`
naming the field to fix, and no message ever contains the key or the file's content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from .errors import CredentialsError

__all__ = [
    "MAX_CREDENTIALS_BYTES",
    "MAX_PRIVATE_KEY_BYTES",
    "MIN_RSA_KEY_BITS",
    "TOKEN_PATH",
    "ServiceAccount",
    "load_credentials_file",
    "parse_credentials",
    "token_endpoint",
]

TOKEN_PATH = "/v1/auth/sa/oauth/token"
MAX_PRIVATE_KEY_BYTES = 64 * 1024
MAX_CREDENTIALS_BYTES = 256 * 1024
MIN_RSA_KEY_BITS = 2048
_MAX_ID_CHARS = 512

# canonical (camelCase) name -> snake_case alias, as the SDK normalises them
_ALIASES = {
    "clientID": "client_id",
    "clientName": "client_name",
    "keyID": "key_id",
    "tokenURI": "token_uri",
    "privateKey": "private_key",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, repr=False)
class ServiceAccount:
    """A parsed, validated Skyflow service account.

    Two accounts compare equal when their identifiers and key fingerprint match; the key object
    itself is never shown by ``repr``.
    """

    client_id: str
    client_name: str | None
    key_id: str
    token_uri: str
    private_key: RSAPrivateKey = field(compare=False)
    key_fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        public_der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        object.__setattr__(self, "key_fingerprint", hashlib.sha256(public_der).hexdigest())

    @property
    def token_endpoint(self) -> str:
        """The URL the token request is POSTed to."""
        return token_endpoint(self.token_uri)

    def __repr__(self) -> str:
        return (
            f"ServiceAccount(client_id={self.client_id!r}, client_name={self.client_name!r}, "
            f"key_id={self.key_id!r}, token_uri={self.token_uri!r}, private_key=<redacted>, "
            f"key_fingerprint={self.key_fingerprint[:16]!r})"
        )


def token_endpoint(token_uri: str) -> str:
    """Return ``{scheme}://{host[:port]}/v1/auth/sa/oauth/token`` for a token URI (as the SDK)."""
    parts = urlsplit(token_uri)
    return f"{parts.scheme}://{parts.netloc}{TOKEN_PATH}"


def parse_credentials(
    raw: str | bytes | Mapping[str, object], *, field_prefix: str = "credentials_json"
) -> ServiceAccount:
    """Parse and validate Skyflow credentials given as JSON text or as a mapping.

    The JSON may be pretty-printed. Keys may be camelCase or snake_case. ``field_prefix`` is
    the configuration field the credentials came from; errors name ``<prefix>.<key>``.
    """
    data = _as_mapping(raw, field_prefix)
    values, names = _normalise_keys(data, field_prefix)

    def name(key: str) -> str:
        return f"{field_prefix}.{names.get(key, key)}"

    client_id = _required_id(values, "clientID", name("clientID"))
    key_id = _required_id(values, "keyID", name("keyID"))
    token_uri = _token_uri(values.get("tokenURI"), name("tokenURI"))
    private_key = _private_key(values.get("privateKey"), name("privateKey"))
    client_name = _optional_text(values.get("clientName"), name("clientName"))
    return ServiceAccount(
        client_id=client_id,
        client_name=client_name,
        key_id=key_id,
        token_uri=token_uri,
        private_key=private_key,
    )


def load_credentials_file(
    path: str | os.PathLike[str], *, field: str = "credentials_file_path"
) -> ServiceAccount:
    """Read and parse a credentials file. Blocking: call it via ``asyncio.to_thread``.

    The path must be absolute. File-system errors raise :class:`CredentialsError` on ``field``;
    content errors name ``<field>.<key>``.
    """
    file = Path(path)
    if "\x00" in str(path):
        raise CredentialsError(field, "must not contain a NUL character")
    if not file.is_absolute():
        raise CredentialsError(field, "must be an absolute path")
    try:
        mode = file.stat().st_mode
        if stat.S_ISDIR(mode):
            raise CredentialsError(field, f"{str(file)!r} is a directory")
        if not stat.S_ISREG(mode):
            # A FIFO or device would block the read, or never end.
            raise CredentialsError(field, f"{str(file)!r} is not a regular file")
        with file.open("rb") as handle:
            content = handle.read(MAX_CREDENTIALS_BYTES + 1)
    except FileNotFoundError:
        raise CredentialsError(field, f"file {str(file)!r} does not exist") from None
    except PermissionError:
        raise CredentialsError(field, f"file {str(file)!r} is not readable") from None
    except IsADirectoryError:
        raise CredentialsError(field, f"{str(file)!r} is a directory") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CredentialsError(field, f"cannot read {str(file)!r}: {reason}") from None
    if len(content) > MAX_CREDENTIALS_BYTES:
        raise CredentialsError(field, f"file is larger than {MAX_CREDENTIALS_BYTES} bytes")
    return parse_credentials(content, field_prefix=field)


def _as_mapping(raw: str | bytes | Mapping[str, object], prefix: str) -> Mapping[str, object]:
    if isinstance(raw, Mapping):
        return raw
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CredentialsError(prefix, "is not UTF-8 text") from None
    if not isinstance(raw, str):
        raise CredentialsError(prefix, "must be JSON text or an object")
    if len(raw) > MAX_CREDENTIALS_BYTES:
        raise CredentialsError(prefix, f"is larger than {MAX_CREDENTIALS_BYTES} bytes")
    if not raw.strip():
        raise CredentialsError(prefix, "is empty")
    try:
        # strict=False lets a PEM pasted with literal newlines inside the string through, which
        # the SDK also tolerates; pretty-printing needs nothing special.
        data = json.loads(raw, strict=False)
    except json.JSONDecodeError as exc:
        # the position only: the decoder's message quotes no content, but keep it that way
        raise CredentialsError(
            prefix, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise CredentialsError(prefix, "is nested too deeply to be credentials") from None
    if not isinstance(data, dict):
        raise CredentialsError(prefix, f"must be a JSON object, not {_json_type(data)}")
    return data


def _normalise_keys(
    data: Mapping[str, object], prefix: str
) -> tuple[dict[str, object], dict[str, str]]:
    """Map snake_case keys onto camelCase; remember which spelling the user wrote."""
    values: dict[str, object] = {}
    names: dict[str, str] = {}
    for canonical, alias in _ALIASES.items():
        present = [key for key in (canonical, alias) if key in data]
        if len(present) == 2:
            raise CredentialsError(
                f"{prefix}.{canonical}", f"given twice, as {canonical!r} and {alias!r}"
            )
        if present:
            values[canonical] = data[present[0]]
            names[canonical] = present[0]
    return values, names


def _required_id(values: Mapping[str, object], key: str, name: str) -> str:
    value = values.get(key)
    if value is None:
        raise CredentialsError(name, "is required")
    if not isinstance(value, str):
        raise CredentialsError(name, f"must be a string, not {_json_type(value)}")
    value = value.strip()
    if not value:
        raise CredentialsError(name, "must not be empty")
    if len(value) > _MAX_ID_CHARS or _CONTROL.search(value) or " " in value:
        raise CredentialsError(name, "is not a valid identifier")
    return value


def _optional_text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CredentialsError(name, f"must be a string, not {_json_type(value)}")
    if len(value) > _MAX_ID_CHARS or _CONTROL.search(value):
        raise CredentialsError(name, "is not a valid name")
    return value.strip() or None


def _token_uri(value: object, name: str) -> str:
    if value is None:
        raise CredentialsError(name, "is required")
    if not isinstance(value, str):
        raise CredentialsError(name, f"must be a string, not {_json_type(value)}")
    value = value.strip()
    if not value:
        raise CredentialsError(name, "must not be empty")
    if len(value) > 2048 or _CONTROL.search(value) or " " in value:
        raise CredentialsError(name, "is not a valid URL")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise CredentialsError(name, "is not a valid URL") from None
    if parts.scheme != "https":
        raise CredentialsError(name, "must be an absolute https:// URL")
    if not parts.hostname:
        raise CredentialsError(name, "must name a host")
    if parts.username is not None or parts.password is not None:
        raise CredentialsError(name, "must not contain user information")
    if port == 0:
        raise CredentialsError(name, "has an invalid port")
    return value


def _private_key(value: object, name: str) -> RSAPrivateKey:
    if value is None:
        raise CredentialsError(name, "is required")
    if not isinstance(value, str):
        raise CredentialsError(name, f"must be a string, not {_json_type(value)}")
    if len(value.encode("utf-8")) > MAX_PRIVATE_KEY_BYTES:
        raise CredentialsError(name, f"is larger than {MAX_PRIVATE_KEY_BYTES} bytes")
    if "-----BEGIN" not in value:
        raise CredentialsError(name, "is not a PEM-encoded private key")
    try:
        key = serialization.load_pem_private_key(value.strip().encode("utf-8"), password=None)
    except TypeError:
        # cryptography raises TypeError for a password-protected key
        raise CredentialsError(name, "is encrypted; Skyflow keys are not") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialsError(name, "is not a valid PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise CredentialsError(name, "must be an RSA private key (Skyflow signs with RS256)")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise CredentialsError(name, f"RSA key must have at least {MIN_RSA_KEY_BITS} bits")
    return key


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
