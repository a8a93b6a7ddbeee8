"""Benchmark rounds take turns in both orders, and a ratio pairs each round's runs."""

from __future__ import annotations

import pytest

from bench.rounds import paired_ratio, round_order


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


def test_rounds_take_turns_in_both_orders() -> None:
    # Each read runs first as often as last, so a cost that falls on whichever runs second
    # (the server still collecting the first one's garbage, say) falls on every read alike.
    reads = ["kv", "floor", "creds"]
    orders = [round_order(reads, index) for index in range(4)]
    assert orders == [reads, reads[::-1], reads, reads[::-1]]
    firsts = [order[0] for order in orders]
    assert firsts.count("kv") == firsts.count("creds") == 2
