"""Skyflow service-account credentials: parsing, validation and the token endpoint.

Skyflow issues a credentials JSON file with ``clientID``, ``clientName``, ``keyID``,
``tokenURI`` and ``privateKey`` (an RSA key in PEM). The official Python SDK also accepts the
snake_case spelling of those keys; so do we. Every problem raises :class:`CredentialsError`
naming the field to fix, and no message ever contains the key or the file's content.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from .errors import CredentialsError

__all__ = [
    "ALLOWED_TOKEN_HOSTS_ENV",
    "CREDENTIALS_DIR_ENV",
    "DEFAULT_TOKEN_HOSTS",
    "MAX_CREDENTIALS_BYTES",
    "MAX_PRIVATE_KEY_BYTES",
    "MIN_RSA_KEY_BITS",
    "TOKEN_PATH",
    "CredentialsFileError",
    "ServiceAccount",
    "TokenHosts",
    "credentials_dir_for",
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
_log = logging.getLogger(__name__)

CREDENTIALS_DIR_ENV = "SKYFLOW_CREDENTIALS_DIR"
ALLOWED_TOKEN_HOSTS_ENV = "SKYFLOW_ALLOWED_TOKEN_HOSTS"
DEFAULT_TOKEN_HOSTS = "manage.skyflowapis.com,manage.skyflowapis-preview.com"
"""Skyflow's token hosts: production and the sandbox ("preview") environment, as the
credentials files Skyflow issues and its SDKs' examples give them (``tokenURI`` =
``https://<host>/v1/auth/sa/oauth/token``)."""
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class TokenHosts:
    """The ``host[:port]`` entries a ``tokenURI`` may name (``SKYFLOW_ALLOWED_TOKEN_HOSTS``).

    A host may start with ``*.`` to match any subdomain (one label or more, not the bare
    domain); a missing port means 443. Hosts compare case-insensitively.
    """

    entries: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, text: str) -> TokenHosts:
        """Parse a comma list; raises ValueError naming the bad entry."""
        entries: list[tuple[str, int]] = []
        for raw in text.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "443")
            try:
                port = int(port_text)
            except ValueError:
                raise ValueError(f"{ALLOWED_TOKEN_HOSTS_ENV}: bad port in {item!r}") from None
            if not 0 < port < 65536:
                raise ValueError(f"{ALLOWED_TOKEN_HOSTS_ENV}: bad port in {item!r}")
            name = host[2:] if host.startswith("*.") else host
            if not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
                raise ValueError(
                    f"{ALLOWED_TOKEN_HOSTS_ENV}: {item!r} is not host[:port] "
                    "(a host may start with *.)"
                )
            entries.append((host, port))
        if not entries:
            raise ValueError(f"{ALLOWED_TOKEN_HOSTS_ENV} lists no host")
        return cls(tuple(entries))

    @classmethod
    def default(cls) -> TokenHosts:
        """Skyflow's own token hosts."""
        return cls.parse(DEFAULT_TOKEN_HOSTS)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TokenHosts:
        """The list in ``SKYFLOW_ALLOWED_TOKEN_HOSTS``, else :meth:`default`."""
        text = env.get(ALLOWED_TOKEN_HOSTS_ENV, "").strip()
        return cls.parse(text) if text else cls.default()

    def allows(self, host: str, port: int) -> bool:
        """True when ``host:port`` matches an entry."""
        host = host.lower().rstrip(".")
        for pattern, allowed_port in self.entries:
            if port != allowed_port:
                continue
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def __str__(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.entries)


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
    raw: str | bytes | Mapping[str, object],
    *,
    field_prefix: str = "credentials_json",
    allowed_hosts: TokenHosts | None = None,
) -> ServiceAccount:
    """Parse and validate Skyflow credentials given as JSON text or as a mapping.

    The JSON may be pretty-printed. Keys may be camelCase or snake_case. ``field_prefix`` is
    the configuration field the credentials came from; errors name ``<prefix>.<key>``.
    With ``allowed_hosts`` (the engine always passes its list), a ``tokenURI`` whose host and
    port are not on it is refused.
    """
    data = _as_mapping(raw, field_prefix)
    values, names = _normalise_keys(data, field_prefix)

    def name(key: str) -> str:
        return f"{field_prefix}.{names.get(key, key)}"

    client_id = _required_id(values, "clientID", name("clientID"))
    key_id = _required_id(values, "keyID", name("keyID"))
    token_uri = _token_uri(values.get("tokenURI"), name("tokenURI"))
    private_key = _private_key(values.get("privateKey"), name("privateKey"))
    if allowed_hosts is not None:
        # policy after syntax: a malformed key is reported as such whatever its host
        _check_host(token_uri, name("tokenURI"), allowed_hosts)
    client_name = _optional_text(values.get("clientName"), name("clientName"))
    return ServiceAccount(
        client_id=client_id,
        client_name=client_name,
        key_id=key_id,
        token_uri=token_uri,
        private_key=private_key,
    )


class CredentialsFileError(CredentialsError):
    """A credentials file could not be used. The caller sees one generic message, whatever
    the reason (missing, unreadable, a directory or FIFO, too large, bad JSON, bad key...),
    so the error is no oracle on the host's files; ``detail`` (for the plugin's log only)
    says why, and never quotes the file."""

    def __init__(self, field: str, detail: str, reference: str) -> None:
        super().__init__(
            field,
            "cannot use this file as credentials; the plugin's log says why "
            f"(reference {reference}; an operator can look it up there)",
        )
        self.detail = detail
        self.reference = reference


def credentials_dir_for(credentials_dir: str | None, mount_point: str, field: str) -> str:
    """The directory whose files the mount at ``mount_point`` may read: ``<dir>/<mount path>``.

    Raises :class:`CredentialsError` when file mode is disabled (no ``credentials_dir``) or
    the mount path cannot name a directory.
    """
    if not credentials_dir:
        raise CredentialsError(
            field,
            f"file mode is disabled on this server; use credentials_json, or ask the operator "
            f"to set {CREDENTIALS_DIR_ENV}=<dir> in the plugin's environment (catalog env) "
            "and to place this mount's file under <dir>/<mount path>/",
        )
    parts = [part for part in mount_point.split("/") if part]
    if not parts or any(part in (".", "..") or "\x00" in part for part in parts):
        raise CredentialsError(field, f"the mount path {mount_point!r} cannot name a directory")
    return os.path.join(os.path.abspath(credentials_dir), *parts)


def load_credentials_file(
    path: str | os.PathLike[str],
    *,
    root: str,
    field: str = "credentials_file_path",
    allowed_hosts: TokenHosts | None = None,
) -> ServiceAccount:
    """Read and parse a credentials file confined to ``root``. Blocking: call it via
    ``asyncio.to_thread``.

    ``path`` must be absolute and lie under ``root`` (see :func:`credentials_dir_for`), both
    as written (no ``.`` or ``..`` segment) and once every symlink is resolved. A path outside
    ``root`` raises :class:`CredentialsError` naming the directory; every other failure, from
    opening the file to parsing its key, raises one :class:`CredentialsFileError` and logs the
    reason. The file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked through its
    descriptor (a regular file, at most :data:`MAX_CREDENTIALS_BYTES`), so nothing can swap it
    between a check and the read, and a FIFO never blocks the thread.
    """
    text = os.fspath(path)
    root = os.path.abspath(root)
    if "\x00" in text:
        raise CredentialsError(field, "must not contain a NUL character")
    if not os.path.isabs(text):
        raise CredentialsError(field, "must be an absolute path")
    segments = text.split("/")
    if any(part in (".", "..") for part in segments):
        raise CredentialsError(field, "must not contain . or .. segments")
    if os.path.commonpath([root, os.path.normpath(text)]) != root:
        raise CredentialsError(field, f"must be a file under {root}/ (this mount's directory)")
    reference = secrets.token_hex(4)
    try:
        content = _read_confined(text, root)
        return parse_credentials(content, field_prefix=field, allowed_hosts=allowed_hosts)
    except (_Refused, CredentialsError, OSError) as exc:
        detail = exc.detail if isinstance(exc, _Refused | CredentialsFileError) else None
        if detail is None:
            detail = str(exc) if isinstance(exc, CredentialsError) else _os_reason(exc)
        _log.warning(
            "credentials file %r refused (reference %s): %s",
            text,
            reference,
            detail,
            extra={"path": text, "reason": detail, "reference": reference},
        )
        raise CredentialsFileError(field, detail, reference) from None


class _Refused(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def _read_confined(path: str, root: str) -> bytes:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise _Refused(f"resolves (through a symlink) outside {real_root}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOCTTY", 0)
    fd = os.open(real, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Refused("is not a regular file")
        if info.st_size > MAX_CREDENTIALS_BYTES:
            raise _Refused(f"is larger than {MAX_CREDENTIALS_BYTES} bytes")
        opened = _descriptor_path(fd)
        # What was opened, not what the name pointed at before: a directory swapped for a
        # symlink between realpath and open is caught here.
        if opened is not None and os.path.commonpath([real_root, opened]) != real_root:
            raise _Refused(f"was opened outside {real_root}")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CREDENTIALS_BYTES:
            chunk = os.read(fd, MAX_CREDENTIALS_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CREDENTIALS_BYTES:
            raise _Refused(f"is larger than {MAX_CREDENTIALS_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _descriptor_path(fd: int) -> str | None:
    """The path the kernel has for an open descriptor (Linux /proc, macOS F_GETPATH)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    getpath = getattr(fcntl, "F_GETPATH", None)
    if getpath is not None:
        try:
            raw = fcntl.fcntl(fd, getpath, bytes(1024))
        except OSError:
            return None
        return os.fsdecode(raw.split(b"\x00", 1)[0])
    return None


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


def _required_text(value: object, name: str) -> str:
    """``value`` stripped; refused when missing, not a string, or blank."""
    if value is None:
        raise CredentialsError(name, "is required")
    if not isinstance(value, str):
        raise CredentialsError(name, f"must be a string, not {_json_type(value)}")
    value = value.strip()
    if not value:
        raise CredentialsError(name, "must not be empty")
    return value


def _required_id(values: Mapping[str, object], key: str, name: str) -> str:
    value = _required_text(values.get(key), name)
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
    value = _required_text(value, name)
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


def _check_host(token_uri: str, name: str, allowed_hosts: TokenHosts) -> None:
    parts = urlsplit(token_uri)
    host, port = parts.hostname or "", parts.port or 443
    if not allowed_hosts.allows(host, port):
        raise CredentialsError(
            name,
            f"host {host}:{port} is not an allowed Skyflow token host ({allowed_hosts}); "
            f"an operator can allow it with {ALLOWED_TOKEN_HOSTS_ENV} in the plugin's "
            "environment",
        )


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
