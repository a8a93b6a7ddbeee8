"""Redaction of upstream text: complete, bounded, and linear in the text's length."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from skyflow_vault_plugin.skyflow import errors
from skyflow_vault_plugin.skyflow.errors import SkyflowUnavailable, redact, safe_text

PEM_BEGIN = "-----BEGIN " + "PRIVATE KEY-----"
PEM_END = "-----END " + "PRIVATE KEY-----"

# Inputs that made the former patterns backtrack: every "eyJ" or "-----BEGIN" restarted a scan
# of the rest of the text (60 KB of "eyJ" took 25 s).
ADVERSARIAL = {
    "jwt heads": "eyJ" * 70_000,
    "jwt dots": "eyJabcd." * 26_000,
    "pem heads": "-----BEGIN-----" * 14_000,
    "pem unterminated": (PEM_BEGIN + "A" * 60 + "\n") * 2_800,
}


def _best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def test_redacts_tokens_and_keys() -> None:
    jwtish = "eyJhbGciOi.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert redact(f"token {jwtish} leaked") == "token [redacted token] leaked"
    assert redact(f"key {PEM_BEGIN}\nAAAA\n{PEM_END} end") == "key [redacted key] end"
    assert redact(f"a {PEM_BEGIN}\nAAAA no end") == "a [redacted key]"
    assert redact("no secrets here") == "no secrets here"


def test_a_token_cut_by_truncation_is_still_redacted() -> None:
    # header and payload before the cut, signature after it
    text = "x" * (4 * 300 - 30) + "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJl"
    assert "eyJ" not in safe_text(text)
    assert "eyJzdWIi" not in safe_text(text)


def test_safe_text_redacts_only_a_bounded_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = errors.redact

    def spy(text: str) -> str:
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(errors, "redact", spy)
    assert len(safe_text("eyJ" * 100_000)) <= 300
    assert seen
    assert max(seen) <= 4 * 300


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_redaction_is_linear_in_the_text(name: str) -> None:
    """A 200 KB hostile message costs about as much as one linear regex pass over it.

    The baseline is a trivially linear substitution over the same text, timed in the same
    test, so machine load affects both sides; the former quadratic patterns were thousands
    of times slower than it on this input."""
    text = ADVERSARIAL[name]
    assert len(text) >= 200_000
    linear = re.compile(r"[A-Za-z]")
    baseline = _best_of(3, lambda: linear.sub("", text))
    cost = _best_of(3, lambda: redact(text))
    assert cost < 20 * baseline + 0.01, (cost, baseline)


def test_error_with_a_huge_hostile_message_is_built_fast() -> None:
    text = ADVERSARIAL["jwt heads"]
    baseline = _best_of(3, lambda: text.split())
    cost = _best_of(3, lambda: SkyflowUnavailable("x", skyflow_message=text))
    error = SkyflowUnavailable("x", skyflow_message=text)
    assert len(str(error)) < 400
    assert "eyJ" not in str(error)
    assert cost < 20 * baseline + 0.01, (cost, baseline)
