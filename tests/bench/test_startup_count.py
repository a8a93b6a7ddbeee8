"""The start-up count: callgrind's total, read from a real run, and a skip that says why."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import startup_count

# Stands in for a launcher: the handshake line, then serving until the host's SIGTERM.
FAKE_LAUNCHER = """#!{python} -I -S
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
{work}
sys.stdout.write("1|5|unix|/nowhere/plugin.sock|grpc|\\n")
sys.stdout.flush()
while True:  # signal.pause() never returns under valgrind
    time.sleep(0.05)
"""


def _launcher(tmp_path: Path, name: str, work: str) -> Path:
    path = tmp_path / name
    path.write_text(FAKE_LAUNCHER.format(python=sys.executable, work=work))
    path.chmod(0o755)
    return path


def test_counts_more_instructions_for_more_work_before_the_handshake(tmp_path: Path) -> None:
    """The count covers exec to the handshake line: work before the line is in it."""
    idle = startup_count.count_launcher_start(_launcher(tmp_path, "idle", ""))
    busy = startup_count.count_launcher_start(
        _launcher(tmp_path, "busy", "sum(i * i for i in range(200_000))")
    )
    assert idle.instructions is not None, idle.note
    assert busy.instructions is not None, busy.note
    assert busy.instructions > idle.instructions + 10_000_000


def test_reads_the_total_of_a_callgrind_file() -> None:
    text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 565597121\n"
    assert startup_count.callgrind_total(text) == 565_597_121
    assert startup_count.callgrind_total("events: Ir\ntotals: 42\n") == 42
    with pytest.raises(ValueError, match="no summary"):
        startup_count.callgrind_total("events: Ir\n")


def test_without_valgrind_the_count_is_skipped_and_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    counted = startup_count.count_launcher_start(_launcher(tmp_path, "idle", ""))
    assert counted.instructions is None
    assert "apt-get install valgrind" in counted.note


def test_a_start_without_a_handshake_line_is_not_counted(tmp_path: Path) -> None:
    refusing = tmp_path / "refusing"
    refusing.write_text(f"#!{sys.executable} -I -S\nimport sys\nsys.exit(3)\n")
    refusing.chmod(0o755)
    counted = startup_count.count_launcher_start(refusing)
    assert counted.instructions is None
    assert counted.note.startswith("failed: no handshake line")
