"""Drive a URL with wrk (a C load generator, so the client costs little next to the server)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency percentiles (milliseconds) of one wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def require_wrk() -> str:
    """The wrk binary, or a clear error saying how to get it."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("benchmarks need wrk: apt-get install -y wrk")
    return path


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, token: str, *, connections: int, seconds: int) -> LoadResult:
    """``wrk`` with one thread, ``connections`` keep-alive connections, for ``seconds``."""
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "token.lua"
        script.write_text(
            f'wrk.headers["X-Vault-Token"] = "{token}"\n'
            "function response(status, headers, body)\n"
            '  if status ~= 200 then wrk.thread:set("bad", (wrk.thread:get("bad") or 0) + 1) end\n'
            "end\n"
        )
        result = subprocess.run(
            [
                require_wrk(),
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return LoadResult(rps, p50, p99, int(non2xx.group(1)) if non2xx else 0)
