"""The telemetry benchmark's ratio pairs each round's runs."""

from __future__ import annotations

import pytest

from bench.telemetry import paired_ratio


def test_each_round_is_compared_with_its_own_pair() -> None:
    # A slow minute began during the second round's "on" run and lasted through the third
    # round: the pairs still say 0.95, where the ratio of the medians says 0.57 (57 / 100).
    on = [95.0, 57.0, 57.0]
    off = [100.0, 100.0, 60.0]
    assert paired_ratio(on, off) == pytest.approx(0.95)
    assert paired_ratio([1.0, 3.0, 8.0], [1.0, 1.0, 4.0]) == pytest.approx(2.0)


def test_rounds_must_pair_up() -> None:
    with pytest.raises(ValueError, match="shorter"):
        paired_ratio([1.0, 2.0], [1.0])
