"""Run every benchmark and write the results to docs/benchmarks.md.

Usage: ``python -m bench [--only plugin_read,token_path,telemetry,telemetry_cpu]`` (needs ``wrk``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import subprocess
from pathlib import Path

from skyflow_devtools.openbao import bao_binary
from skyflow_vault_plugin import __version__

SECTIONS = ("plugin_read", "token_path", "telemetry", "telemetry_cpu")
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
# Everything from this line to the end of benchmarks.md is written by hand (the history of
# measured changes) and kept when the benchmark rewrites the rest.
HISTORY_MARKER = "<!-- history: kept by `make bench` -->"
INTRO = """\
# Benchmarks

Run on demand with `make bench` (`python -m bench`; needs `wrk`: `apt-get install -y wrk`).
The Go floor (nullgo, from `../shared/anchors/nullgo`, built as it is and once more with an
audit line per request) needs Go and a few Debian packages (bench/floor.py installs them
when run as root with apt); without them it is skipped.
Every figure is a ratio against a baseline measured in the same run on the same server, so
that the machine's speed cancels out. What the numbers mean and where the time goes is in
[performance.md](performance.md).
"""


def machine() -> str:
    """One line describing where the benchmark ran."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    bao = subprocess.run(
        [str(bao_binary()), "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"Run {datetime.date.today().isoformat()} on {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, {bao}, plugin v{__version__}."
    )


def kept_history() -> str:
    """The hand-written part of benchmarks.md, from :data:`HISTORY_MARKER` on."""
    text = OUTPUT.read_text() if OUTPUT.is_file() else ""
    index = text.find(HISTORY_MARKER)
    return "\n" + text[index:] if index >= 0 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS))
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    parts = [INTRO, machine(), ""]
    for name in chosen:
        if name not in SECTIONS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(SECTIONS)}")
        module = importlib.import_module(f"bench.{name}")
        print(f"running {name} ...", flush=True)
        parts.append(module.run())
    OUTPUT.write_text("\n".join(parts) + "\n" + kept_history())
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
