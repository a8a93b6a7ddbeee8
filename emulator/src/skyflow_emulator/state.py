"""The emulator's mutable state: accounts, signing key, fault knobs and counters.

Everything runs on one event loop (uvicorn's, or the test's with ``httpx.ASGITransport``), so
no locking is needed.

With a state directory (``skyflow-emulator --state-dir``), the accounts (public halves only)
and the token-signing key are kept in ``state.json`` and ``signing-key.pem`` and loaded again
at the next start, so clients configured against the emulator keep working across restarts.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from .tls import write_private

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "Account",
    "ClientCounters",
    "EmulatorState",
    "Faults",
    "RecordedRequest",
    "Rejection",
    "load_state",
]

STATE_FILE = "state.json"
SIGNING_KEY_FILE = "signing-key.pem"
_STATE_VERSION = 1

DEFAULT_TOKEN_LIFETIME = 3600
_MAX_RECORDS = 1000  # keep memory bounded in long demo runs


@dataclass(frozen=True)
class Account:
    """A service account the emulator knows: only its public halves are kept.

    ``key_id``/``public_key`` are its newest key; ``previous_keys`` are older keys that
    still verify until revoked, as in Skyflow, where a service account may hold several
    keys while one is rotated out.
    """

    client_id: str
    key_id: str
    client_name: str
    token_uri: str
    public_key: RSAPublicKey = field(repr=False, compare=False)
    previous_keys: tuple[tuple[str, RSAPublicKey], ...] = field(
        default=(), repr=False, compare=False
    )

    def public_key_for(self, key_id: object) -> RSAPublicKey | None:
        """The public key of an active key of this account, or None."""
        if key_id == self.key_id:
            return self.public_key
        return next((key for kid, key in self.previous_keys if kid == key_id), None)

    @property
    def key_ids(self) -> list[str]:
        """Every active key ID, newest first."""
        return [self.key_id, *(kid for kid, _ in self.previous_keys)]

    def with_new_key(self, key_id: str, public_key: RSAPublicKey) -> Account:
        """This account with a new newest key; the current one stays valid."""
        older = ((self.key_id, self.public_key), *self.previous_keys)
        return replace(self, key_id=key_id, public_key=public_key, previous_keys=older)

    def without_key(self, key_id: str) -> Account:
        """This account with ``key_id`` revoked (ValueError for its only or an unknown key)."""
        if key_id not in self.key_ids:
            raise KeyError(key_id)
        if len(self.key_ids) == 1:
            raise ValueError("cannot revoke the only key of an account")
        keys = [(kid, key) for kid, key in self._all_keys() if kid != key_id]
        (newest_id, newest), *rest = keys
        return replace(self, key_id=newest_id, public_key=newest, previous_keys=tuple(rest))

    def _all_keys(self) -> list[tuple[str, RSAPublicKey]]:
        return [(self.key_id, self.public_key), *self.previous_keys]

    def to_json(self) -> dict[str, Any]:
        """The account as ``state.json`` keeps it (public keys only)."""
        return {
            "clientID": self.client_id,
            "clientName": self.client_name,
            "tokenURI": self.token_uri,
            "keys": [
                {"keyID": kid, "publicKey": _public_pem(key)} for kid, key in self._all_keys()
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Account:
        """The inverse of :meth:`to_json`."""
        keys = [(str(k["keyID"]), _load_public(str(k["publicKey"]))) for k in data["keys"]]
        (key_id, public_key), *rest = keys
        return cls(
            client_id=str(data["clientID"]),
            key_id=key_id,
            client_name=str(data["clientName"]),
            token_uri=str(data["tokenURI"]),
            public_key=public_key,
            previous_keys=tuple(rest),
        )


def _public_pem(key: RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _load_public(pem: str) -> RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(key, RSAPublicKey):
        raise ValueError("state.json holds a key that is not an RSA public key")
    return key


@dataclass
class Faults:
    """Fault knobs applied to token requests before any verification.

    ``fail_status`` fails calls with that status (``fail_count`` of them, or all while set when
    ``fail_count`` is None), adding ``Retry-After: retry_after`` when given. ``reject`` answers
    every call with 401. ``latency`` delays every call by that many seconds first.
    ``error_message`` replaces the message of those failures (a hostile endpoint's, say),
    repeated ``error_repeat`` times (a huge message without a huge admin request).
    """

    latency: float = 0.0
    fail_status: int | None = None
    fail_count: int | None = None
    retry_after: float | None = None
    reject: bool = False
    error_message: str | None = None
    error_repeat: int | None = None

    def validate(self) -> None:
        """Raise ValueError when the knobs make no sense."""
        if not 0 <= self.latency <= 600:
            raise ValueError("latency must be between 0 and 600 seconds")
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if self.fail_count is not None and self.fail_count < 0:
            raise ValueError("fail_count must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if self.error_repeat is not None and not 1 <= self.error_repeat <= 1_000_000:
            raise ValueError("error_repeat must be between 1 and 1000000")

    def as_dict(self) -> dict[str, Any]:
        """JSON form, as the admin API shows it."""
        return asdict(self)


@dataclass
class ClientCounters:
    """Token-call counters of one client ID."""

    calls: int = 0
    successes: int = 0
    failures: int = 0


@dataclass(frozen=True)
class RecordedRequest:
    """A successful token request as the emulator understood it."""

    request_id: str
    client_id: str
    header: dict[str, Any]
    claims: dict[str, Any]
    scope: str | None
    role_ids: list[str]
    ctx: Any
    has_ctx: bool
    body_keys: list[str]


@dataclass(frozen=True)
class Rejection:
    """A failed token request: status and the message sent back."""

    request_id: str
    status: int
    message: str
    client_id: str | None


@dataclass
class EmulatorState:
    """Accounts, the token-signing key, fault knobs and counters of one emulator."""

    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    accounts: dict[str, Account] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    token_calls: int = 0
    successes: int = 0
    failures: int = 0
    by_client: dict[str, ClientCounters] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    signing_key: RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        repr=False,
    )
    signing_key_id: str = field(default_factory=lambda: f"emulator-{uuid.uuid4().hex[:12]}")
    started_at: float = field(default_factory=time.time)
    state_dir: Path | None = None
    """Where accounts and the signing key are kept across restarts (None: in memory only)."""
    port: int | None = None
    """The port last served on, kept so that a restart can serve the same tokenURIs."""

    def add_account(self, account: Account) -> None:
        """Register (or replace) a service account (by client ID)."""
        self.accounts[account.client_id] = account
        self.save()

    def save(self) -> None:
        """Write accounts and the signing key to ``state_dir`` (when there is one)."""
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.state_dir / SIGNING_KEY_FILE
        if not key_file.exists():
            pem = self.signing_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(key_file, pem)
        document = {
            "version": _STATE_VERSION,
            "port": self.port,
            "signing_key_id": self.signing_key_id,
            "accounts": [a.to_json() for a in self.accounts.values()],
        }
        target = self.state_dir / STATE_FILE
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(temporary, target)  # a crash mid-write leaves the previous file

    def public_key_pem(self) -> str:
        """The PEM public key that verifies the access tokens this emulator issues."""
        return (
            self.signing_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault knobs (validated)."""
        faults.validate()
        self.faults = faults

    def reset_faults(self) -> None:
        """Back to a healthy emulator."""
        self.faults = Faults()

    def reset_stats(self) -> None:
        """Zero all counters and forget recorded requests."""
        self.token_calls = self.successes = self.failures = 0
        self.by_client.clear()
        self.requests.clear()
        self.rejections.clear()

    def take_fault(self) -> tuple[int, float | None] | None:
        """Consume one injected failure: ``(status, retry_after)``, or None for a normal call."""
        faults = self.faults
        if faults.reject:
            return 401, None
        if faults.fail_status is None:
            return None
        if faults.fail_count is not None:
            if faults.fail_count <= 0:
                return None
            faults.fail_count -= 1
        return faults.fail_status, faults.retry_after

    def record_call(self, client_id: str | None) -> None:
        """Count a token call (client ID when known)."""
        self.token_calls += 1
        if client_id is not None:
            self.by_client.setdefault(client_id, ClientCounters()).calls += 1

    def record_success(self, request: RecordedRequest) -> None:
        """Count a success and keep what was asked."""
        self.successes += 1
        self.by_client.setdefault(request.client_id, ClientCounters()).successes += 1
        self.requests.append(request)
        del self.requests[:-_MAX_RECORDS]

    def record_failure(self, rejection: Rejection) -> None:
        """Count a failure and keep its reason."""
        self.failures += 1
        if rejection.client_id is not None:
            self.by_client.setdefault(rejection.client_id, ClientCounters()).failures += 1
        self.rejections.append(rejection)
        del self.rejections[:-_MAX_RECORDS]

    def snapshot(self) -> dict[str, Any]:
        """Counters, recorded requests and faults as JSON-ready data."""
        return {
            "token_calls": self.token_calls,
            "successes": self.successes,
            "failures": self.failures,
            "by_client": {cid: asdict(c) for cid, c in self.by_client.items()},
            "requests": [asdict(r) for r in self.requests],
            "rejections": [asdict(r) for r in self.rejections],
            "faults": self.faults.as_dict(),
            "accounts": sorted(self.accounts),
            "token_lifetime": self.token_lifetime,
        }


def load_state(state_dir: Path, *, token_lifetime: int = DEFAULT_TOKEN_LIFETIME) -> EmulatorState:
    """The state kept in ``state_dir``, or a new one (saved there from now on)."""
    state_file = state_dir / STATE_FILE
    key_file = state_dir / SIGNING_KEY_FILE
    if not state_file.exists() or not key_file.exists():
        state = EmulatorState(token_lifetime=token_lifetime, state_dir=state_dir)
        state.save()
        return state
    document = json.loads(state_file.read_text())
    if document.get("version") != _STATE_VERSION:
        raise ValueError(f"{state_file}: unknown state version {document.get('version')!r}")
    signing_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(signing_key, RSAPrivateKey):
        raise ValueError(f"{key_file}: not an RSA private key")
    accounts = [Account.from_json(a) for a in document.get("accounts", [])]
    port = document.get("port")
    return EmulatorState(
        token_lifetime=token_lifetime,
        accounts={a.client_id: a for a in accounts},
        signing_key=signing_key,
        signing_key_id=str(document["signing_key_id"]),
        state_dir=state_dir,
        port=port if isinstance(port, int) else None,
    )
