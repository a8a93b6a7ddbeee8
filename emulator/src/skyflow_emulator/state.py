"""The emulator's mutable state: accounts, signing key, fault knobs and counters.

Everything runs on one event loop (uvicorn's, or the test's with ``httpx.ASGITransport``), so
no locking is needed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "Account",
    "ClientCounters",
    "EmulatorState",
    "Faults",
    "RecordedRequest",
    "Rejection",
]

DEFAULT_TOKEN_LIFETIME = 3600
_MAX_RECORDS = 1000  # keep memory bounded in long demo runs


@dataclass(frozen=True)
class Account:
    """A service account the emulator knows: only its public half is kept."""

    client_id: str
    key_id: str
    client_name: str
    token_uri: str
    public_key: RSAPublicKey = field(repr=False, compare=False)


@dataclass
class Faults:
    """Fault knobs applied to token requests before any verification.

    ``fail_status`` fails calls with that status (``fail_count`` of them, or all while set when
    ``fail_count`` is None), adding ``Retry-After: retry_after`` when given. ``reject`` answers
    every call with 401. ``latency`` delays every call by that many seconds first.
    """

    latency: float = 0.0
    fail_status: int | None = None
    fail_count: int | None = None
    retry_after: float | None = None
    reject: bool = False

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

    def add_account(self, account: Account) -> None:
        """Register a service account (by client ID)."""
        self.accounts[account.client_id] = account

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
