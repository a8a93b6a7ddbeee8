"""Rounds of runs that take turns, and ratios taken within each round.

On a shared machine the throughput of one minute can differ from the next by more than the
differences measured (docs/performance.md). So the reads a ratio compares run back to back
in each round, the order of a round is the reverse of the one before it (a read that always
ran second, on a server still busy with the first one's garbage, would always pay for it),
and a ratio is the median over rounds of each round's own ratio: a slow minute moves the
rounds it falls in, not the result.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def round_order(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` in the order round ``round_index`` runs them: as given in even rounds,
    reversed in odd ones."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def paired_ratio(values: Sequence[float], baseline: Sequence[float]) -> float:
    """The median over rounds of ``value / baseline``, each round's pair measured back to
    back.

    Raises:
        ValueError: the two do not have one value per round each.
    """
    return statistics.median(a / b for a, b in zip(values, baseline, strict=True))
