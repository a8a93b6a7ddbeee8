"""Soak benchmark: mixed traffic at a fixed rate against a real OpenBao and the emulator.

Run on demand (not in CI)::

    .venv/bin/python -m bench.soak --minutes 10          # writes docs/reliability.md
    .venv/bin/python -m bench.soak --minutes 1 --no-docs # a quick look

Three business-unit mounts (``skyflow/insurance``, ``skyflow/lending``, ``skyflow/clcm``), each
with its own service account and a producer, a consumer and an uncached role, receive one
request at a time at a fixed rate: creds reads (no ctx, string ctx by GET, map ctx by POST),
role and config reads and writes, role lists, health checks, and a small share of requests
that must fail (an unknown role, a bad ctx key). The emulator issues short-lived tokens
(``--token-lifetime``, 180 s by default) so that tokens expire and are renewed many times in
the run.

The figures:

* **errors**: every answer is checked against what that request must give; anything else
  (a 5xx, a transport error, a 200 where a 400 was due) is an unexpected error.
* **memory**: the plugin's RSS after the warm-up and at the end (and its peak), sampled
  every few seconds; the same PID must serve the whole run.
* **upstream calls**: a model of the token cache predicts, request by request, whether the
  plugin must call Skyflow: once per (role, ctx) per reuse window (token lifetime minus the
  role's ``min_remaining_ttl``), again after a write of that role or of the config (which
  also mints one token to validate the credentials), on every read of an uncached role, and
  for health at most once a minute. The prediction is compared with the tokens the client
  actually saw change and with the emulator's own count of token requests.

Parts: :mod:`bench.soak_model` (the token-cache model), :mod:`bench.soak_traffic` (the mix
and the driver), :mod:`bench.soak_report` (the figures and the docs section); this module
starts the servers, runs the loop and samples memory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from bench.soak_report import Result, render, write_docs
from bench.soak_traffic import MIN_REMAINING, PLUGIN, Soak
from skyflow_devtools.catalog import install_plugin, python_launcher
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_emulator.process import EmulatorProcess


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "n": float(len(ordered)),
        "p50": pick(0.50),
        "p99": pick(0.99),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


@contextlib.contextmanager
def _servers(work_dir: Path, lifetime: int) -> Iterator[tuple[OpenBaoServer, EmulatorProcess]]:
    emulator = EmulatorProcess(state_dir=work_dir / "emulator", token_lifetime=lifetime).start()
    try:
        bao = OpenBaoServer.dev(work_dir / "bao", env=emulator.plugin_env(), log_level="info")
        with bao:
            install_plugin(bao, name=PLUGIN, executable=python_launcher("skyflow_vault_plugin.cli"))
            yield bao, emulator
    finally:
        emulator.stop()


def run(
    minutes: float, rate: float, lifetime: int, seed: int, work_dir: Path, progress: bool
) -> Result:
    """Run the soak and return its figures."""
    duration = minutes * 60.0
    warm_up = min(60.0, duration / 5)
    with _servers(work_dir, lifetime) as (bao, emulator):
        soak = Soak(bao, emulator, lifetime=lifetime, seed=seed)
        soak.set_up()
        pid = soak.plugin_pid()
        pid_changes = 0
        samples: list[tuple[float, int]] = []
        rss_warm = 0
        started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        start = time.monotonic()
        next_sample = start
        interval = 1.0 / rate
        index = 0
        while True:
            due = start + index * interval
            now = time.monotonic()
            if due - start >= duration:
                break
            if due > now:
                time.sleep(due - now)
            else:
                soak.counters.max_lag = max(soak.counters.max_lag, now - due)
            soak.step()
            index += 1
            now = time.monotonic()
            if now >= next_sample:
                current = soak.plugin_pid()
                if current != pid:
                    pid_changes += 1
                    pid = current
                if current is not None:
                    rss = _rss_kib(current)
                    samples.append((round(now - start, 1), rss))
                    if not rss_warm and now - start >= warm_up:
                        rss_warm = rss
                next_sample = now + 5.0
                if progress:
                    print(
                        f"[{now - start:6.0f} s] requests={soak.counters.requests} "
                        f"rss={samples[-1][1] if samples else 0} KiB "
                        f"unexpected={len(soak.counters.unexpected)}",
                        file=sys.stderr,
                        flush=True,
                    )
        elapsed = time.monotonic() - start
        final_pid = soak.plugin_pid()
        rss_end = _rss_kib(final_pid) if final_pid is not None else 0
        upstream = soak.upstream_calls()
        version = str(bao.cli("version").stdout.strip())
    counters = soak.counters
    rss_warm = rss_warm or (samples[0][1] if samples else 0)
    return Result(
        minutes=minutes,
        rate=rate,
        token_lifetime=lifetime,
        requests=counters.requests,
        by_op=dict(sorted(counters.by_op.items())),
        unexpected_errors=len(counters.unexpected),
        unexpected_samples=counters.unexpected[:20],
        expected_errors=counters.expected_errors,
        upstream_calls=upstream,
        predicted_calls=counters.predicted_calls,
        observed_calls=counters.observed_calls,
        mispredictions=counters.mispredictions,
        boundary_cases=counters.boundary,
        misprediction_samples=counters.misprediction_samples,
        rss_warm_kib=rss_warm,
        rss_end_kib=rss_end,
        rss_peak_kib=max((s[1] for s in samples), default=rss_end),
        rss_change_pct=round(100.0 * (rss_end - rss_warm) / rss_warm, 2) if rss_warm else 0.0,
        rss_samples=samples,
        plugin_pid_changes=pid_changes,
        latency_ms={op: _percentiles(v) for op, v in sorted(counters.latencies.items())},
        max_lag_s=round(counters.max_lag, 3),
        started_at=started_at,
        duration_s=round(elapsed, 1),
        openbao_version=version,
        python=sys.version.split()[0],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (20)")
    parser.add_argument(
        "--token-lifetime", type=int, default=180, help="emulator token lifetime, s (180)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--render", type=Path, help="only render this JSON into the docs")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.token_lifetime <= MIN_REMAINING:
        parser.error(f"--token-lifetime must exceed the roles' min_remaining_ttl ({MIN_REMAINING})")

    if args.render:
        result = Result(**json.loads(args.render.read_text()))
    else:
        with tempfile.TemporaryDirectory(prefix="skyflow-soak-") as tmp:
            result = run(
                args.minutes, args.rate, args.token_lifetime, args.seed, Path(tmp), not args.quiet
            )
        if args.json:
            args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    section = render(result)
    print(section)
    if not args.no_docs:
        write_docs(section)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
