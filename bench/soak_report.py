"""The soak's figures and their Markdown section in docs/reliability.md."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.soak_traffic import MIN_REMAINING

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


@dataclass
class Result:
    minutes: float
    rate: float
    token_lifetime: int
    requests: int
    by_op: dict[str, int]
    unexpected_errors: int
    unexpected_samples: list[str]
    expected_errors: int
    upstream_calls: int
    predicted_calls: int
    observed_calls: int
    mispredictions: int
    boundary_cases: int
    misprediction_samples: list[str]
    rss_warm_kib: int
    rss_end_kib: int
    rss_peak_kib: int
    rss_change_pct: float
    rss_samples: list[tuple[float, int]]
    plugin_pid_changes: int
    latency_ms: dict[str, dict[str, float]]
    max_lag_s: float
    started_at: str
    duration_s: float
    openbao_version: str
    python: str

    @property
    def passed(self) -> bool:
        return (
            self.unexpected_errors == 0
            and abs(self.rss_change_pct) <= 10.0
            and self.upstream_calls == self.observed_calls
            and self.mispredictions == 0
            and self.plugin_pid_changes == 0
        )


def rss_slope(result: Result) -> float:
    """Least-squares RSS growth after the warm-up, in KiB per minute."""
    warm_up = min(60.0, result.duration_s / 5)
    points = [(float(t), float(kib)) for t, kib in result.rss_samples if t >= warm_up]
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_k = statistics.fmean(k for _, k in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return 0.0
    return 60.0 * sum((t - mean_t) * (k - mean_k) for t, k in points) / spread


def render(result: Result) -> str:
    """The Markdown section for docs/reliability.md."""
    verdict = "PASS" if result.passed else "FAIL"
    creds_ops = ("creds_get", "creds_post_map")
    creds_lat = [result.latency_ms[op] for op in creds_ops if op in result.latency_ms]
    lines = [
        BEGIN,
        f"Last run: {result.started_at}, {result.duration_s:.0f} s "
        f"({result.minutes:g} min requested) at {result.rate:g} requests/s, one at a time; "
        f"emulator token lifetime {result.token_lifetime} s, roles' min_remaining_ttl "
        f"{MIN_REMAINING} s; {result.openbao_version}, Python {result.python}. "
        f"Verdict: **{verdict}**.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {result.requests} |",
        f"| unexpected errors | **{result.unexpected_errors}** |",
        f"| expected errors (400 bad ctx, 404 unknown role) | {result.expected_errors} |",
        f"| plugin RSS after warm-up | {result.rss_warm_kib / 1024:.1f} MiB |",
        f"| plugin RSS at the end | {result.rss_end_kib / 1024:.1f} MiB "
        f"(**{result.rss_change_pct:+.1f}%**) |",
        f"| plugin RSS peak | {result.rss_peak_kib / 1024:.1f} MiB |",
        f"| plugin RSS trend after warm-up (least squares) | {rss_slope(result):+.0f} KiB/min |",
        f"| plugin process restarts | {result.plugin_pid_changes} |",
        f"| upstream token calls (emulator count) | **{result.upstream_calls}** |",
        f"| upstream calls predicted by the cache model | {result.predicted_calls} |",
        f"| upstream calls observed by the client | {result.observed_calls} |",
        f"| requests where prediction and observation differ | {result.mispredictions} |",
        f"| requests at a reuse-window boundary (either answer right) | {result.boundary_cases} |",
        f"| worst lag behind the fixed schedule | {result.max_lag_s:.3f} s |",
    ]
    for op, stats in zip(creds_ops, creds_lat, strict=False):
        lines.append(
            f"| `{op}` latency p50 / p99 / max | {stats['p50']} / {stats['p99']} / "
            f"{stats['max']} ms |"
        )
    lines += [
        "",
        "Requests by operation: " + ", ".join(f"{k} {v}" for k, v in result.by_op.items()),
    ]
    if result.misprediction_samples:
        lines += ["", "Mispredictions (first 20):", ""]
        lines += [f"- {sample}" for sample in result.misprediction_samples]
    if result.unexpected_samples:
        lines += ["", "Unexpected errors (first 20):", ""]
        lines += [f"- {sample}" for sample in result.unexpected_samples]
    lines.append(END)
    return "\n".join(lines)


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace the soak section of docs/reliability.md (or append one)."""
    text = path.read_text() if path.exists() else "# Reliability\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## Soak\n\n" + section + "\n"
    path.write_text(text)
