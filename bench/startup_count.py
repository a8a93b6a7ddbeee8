"""Exec-to-handshake in instructions: the start-up figure the machine's load cannot move.

Wall-clock start-up on a shared machine swings by a third from one minute to the next (the
bare interpreter alone took 18 to 35 ms in one day), so a start-up step is judged by the
instructions the launcher's process executes, counted by valgrind's callgrind: the same count
for the same code, whatever else runs. The count runs from exec to the handshake line and the
clean exit the host's SIGTERM then causes (a fixed tail, about 50M instructions); the check's
forked child runs on the other core and is not counted.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from skyflow_vault_plugin.startup import fake_host_environment


@dataclass(frozen=True)
class StartupCount:
    """Instructions of the launcher's process, or why they were not counted."""

    instructions: int | None
    note: str


def callgrind_total(text: str) -> int:
    """The instruction total of a callgrind output file (its ``summary:`` or ``totals:``)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("summary", "totals"):
            return int(value.split()[0])
    raise ValueError("no summary or totals line in the callgrind output")


def count_launcher_start(launcher: Path, timeout: float = 120.0) -> StartupCount:
    """Run ``launcher`` under callgrind as a host would, stop it at its handshake line.

    ``timeout`` bounds the wait for the line, and then for the exit.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return StartupCount(None, "skipped: valgrind is not installed (apt-get install valgrind)")
    # The shebang's interpreter and flags, as the host's exec would run them.
    with launcher.open(encoding="utf-8") as file:
        interpreter = file.readline()[2:].split()
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as out_dir:
        out = os.path.join(out_dir, "callgrind.%p")
        proc = subprocess.Popen(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *interpreter,
                str(launcher),
            ],
            env=fake_host_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = b""
        if select.select([proc.stdout], [], [], timeout)[0]:
            line = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return StartupCount(None, f"failed: no exit within {timeout:.0f} s of SIGTERM")
        if not line.startswith(b"1|"):
            tail = err.decode(errors="replace")[-300:]
            return StartupCount(None, f"failed: no handshake line under valgrind ({tail})")
        text = Path(out.replace("%p", str(proc.pid))).read_text(encoding="utf-8")
        return StartupCount(callgrind_total(text), "valgrind's callgrind")
