"""The read benchmark's like-for-like ratios: each ``creds`` read against the Go floor that
does what it does about the audit line."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import plugin_read
from bench.plugin_read import CREDS, CREDS_QUIET, FLOOR, FLOOR_AUDIT, Measured
from bench.wrk import LoadResult
from skyflow_vault_plugin.startup import StartupSample


def _rounds(*rps_and_p50: tuple[float, float]) -> list[Measured]:
    return [Measured(LoadResult(rps, p50, p50 * 3, 0), 0.2, 0.1) for rps, p50 in rps_and_p50]


def test_like_for_like_pairs_each_creds_read_with_its_floor() -> None:
    rounds = {
        FLOOR: _rounds((5000, 2.0), (4000, 2.0), (5000, 2.0)),
        FLOOR_AUDIT: _rounds((4500, 2.0), (4500, 2.0), (4500, 2.0)),
        CREDS: _rounds((4050, 2.4), (3600, 2.2), (4500, 2.6)),
        CREDS_QUIET: _rounds((4500, 2.0), (3600, 2.4), (4600, 2.0)),
    }
    (line, blank) = plugin_read._like_for_like(rounds)
    assert blank == ""
    # medians of the rounds' own ratios: 0.9, 0.8, 1.0 -> 0.90; 1.2, 1.1, 1.3 -> 1.20
    assert "with the audit line: 0.90x the Go floor's throughput, 1.20x its p50" in line
    # 0.9, 0.9, 0.92 -> 0.90; 1.0, 1.2, 1.0 -> 1.00
    assert "without it: 0.90x the Go floor's throughput, 1.00x its p50" in line


def test_like_for_like_says_nothing_without_the_floors() -> None:
    rounds = {CREDS: _rounds((4000, 2.0)), CREDS_QUIET: _rounds((4000, 2.0))}
    assert plugin_read._like_for_like(rounds) == []


def test_like_for_like_gives_the_pair_it_has() -> None:
    rounds = {FLOOR: _rounds((5000, 2.0)), CREDS_QUIET: _rounds((4000, 2.5))}
    (line, _) = plugin_read._like_for_like(rounds)
    assert line == (
        "Like for like, the warm `creds` read without it: 0.80x the Go floor's throughput, "
        "1.25x its p50."
    )


def test_the_launcher_report_gives_the_medians_of_its_check_and_of_the_native_waits() -> None:
    samples = [
        StartupSample(100.0, verify, "1|5|unix|x|grpc|", native_wait_ms=wait)
        for verify, wait in ((70.0, 0.0), (80.0, 2.5), (75.0, 12.0))
    ]
    report = plugin_read._launcher_report(samples)
    assert "its check ended 75 ms after its start" in report
    assert "which waited 2.5 ms in all for its copies of native libraries" in report
    assert "(the most in one start: 12.0 ms)" in report
    # A plain interpreter (no launcher) reports neither.
    assert plugin_read._launcher_report([StartupSample(50.0, None, "1|5|unix|x|grpc|")]) == (
        "The launcher reported no timing."
    )
