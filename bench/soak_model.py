"""The soak's model of the plugin's token cache: when each request must reach Skyflow."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

Window = tuple[float, float]
"""An instant known to lie between two others (epoch seconds)."""


@dataclass(frozen=True)
class Held:
    """A token the model knows the plugin holds: when it expires and when it was issued."""

    expires: Window
    issued: Window


@dataclass
class CacheModel:
    """What the plugin's token cache must hold, to predict each upstream call.

    Instants are kept as ranges: a creds answer gives the exact ``expires_at``, but a health
    token's expiry and issue time are only known to lie between the request's start and end
    (plus the lifetime, to the emulator's whole second).
    """

    lifetime: int
    held: dict[tuple[str, str, str], Held] = field(default_factory=dict)
    last_token: dict[tuple[str, str, str], str] = field(default_factory=dict)
    health: dict[str, Held] = field(default_factory=dict)

    def minted(self, started: float, ended: float) -> Held:
        expires = (float(int(started) + self.lifetime), float(int(ended) + self.lifetime))
        return Held(expires, (started, ended))

    def role_written(self, mount: str, role: str) -> None:
        for key in [k for k in self.held if k[0] == mount and k[1] == role]:
            del self.held[key]

    def config_written(self, mount: str, started: float, ended: float) -> None:
        for key in [k for k in self.held if k[0] == mount]:
            del self.held[key]
        # the validation probe's token becomes the health token
        self.health[mount] = self.minted(started, ended)


def needs_call(
    held: Held | None,
    min_remaining: float,
    started: float,
    ended: float,
    max_age: float | None = None,
) -> bool | None:
    """Whether the plugin must mint: True, False, or None when it depends on the exact
    instant it decided (a boundary fell inside the request). A held token answers while it
    stays valid ``min_remaining`` seconds and, with ``max_age``, was issued less than that
    long ago (health probes Skyflow at most once a minute)."""
    if held is None:
        return True
    (exp_low, exp_high), (issued_low, issued_high) = held.expires, held.issued
    if exp_high - started < min_remaining:
        return True
    if max_age is not None and started - issued_high >= max_age:
        return True
    fresh = max_age is None or ended - issued_low < max_age
    if exp_low - ended >= min_remaining and fresh:
        return False
    return None


@dataclass
class Counters:
    requests: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    expected_errors: int = 0
    predicted_calls: int = 0
    observed_calls: int = 0  # tokens seen to change, health "cached: false", probes, no-cache
    mispredictions: int = 0
    boundary: int = 0  # the request straddled a reuse-window boundary: either answer is right
    misprediction_samples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    max_lag: float = 0.0


def epoch_seconds(rfc3339: str) -> float:
    moment = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")
    return moment.replace(tzinfo=datetime.UTC).timestamp()
