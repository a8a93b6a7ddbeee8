"""Shared pieces of the reliability suite: a real OpenBao with the Skyflow plugin installed the
way an operator does it (sha256-pinned catalog entry), the Skyflow emulator over HTTPS, and
helpers that look for secrets without ever printing them.

The stack itself is tests/stack.py, shared with the e2e suite; this suite installs the plugin
with a plain launcher and adds a second catalog entry with a short deadline (``FAST_PLUGIN``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from skyflow_emulator.process import EmulatorAdmin
from tests.stack import (
    FAST_DEADLINE,
    FAST_PLUGIN,
    PLUGIN_LAUNCHER,
    PLUGIN_NAME,
    Stack,
    start_stack,
)

__all__ = ["FAST_DEADLINE", "FAST_PLUGIN", "PLUGIN_LAUNCHER", "PLUGIN_NAME", "Stack", "start_stack"]


# -------------------------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """OpenBao (dev) + plugin + emulator, shared by a module's tests."""
    with start_stack(tmp_path_factory.mktemp("stack"), fast_plugin=True) as running:
        yield running


@pytest.fixture
def healthy(stack: Stack) -> Iterator[EmulatorAdmin]:
    """The emulator with faults and counters cleared before and after the test."""
    stack.admin.reset()
    stack.admin.set_token_lifetime(3600)
    yield stack.admin
    stack.admin.reset()
    stack.admin.set_token_lifetime(3600)


# ------------------------------------------------------------------------- plugin processes


def kill_and_wait(
    pids: Iterable[int], timeout: float = 10.0, *, server_log: Path | None = None
) -> None:
    """SIGKILL ``pids`` and wait until each is gone (reaped by OpenBao, its parent) and, with
    ``server_log``, until OpenBao has logged each exit: its go-plugin client marks the plugin
    exited only after that line, and a request sent before then fails (docs/reliability.md)."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout

    def noticed(pid: int) -> bool:
        if Path(f"/proc/{pid}").exists():
            return False
        if server_log is None:
            return True
        return any(
            "plugin process exited" in line and f" id={pid}" in line
            for line in server_log.read_text(errors="replace").splitlines()
        )

    while not all(noticed(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"plugin processes {pids} not gone, or not noticed by OpenBao")
        time.sleep(0.02)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------------ secret scanning


def pem_body_lines(pem: str) -> list[str]:
    """The base64 body lines of a PEM block: what a leaked key would contain."""
    return [
        line.strip()
        for line in pem.splitlines()
        if line.strip() and not line.strip().startswith("-----")
    ]


@dataclass
class Secrets:
    """Every secret a run handled, by label. Matching reports labels, never the secret."""

    needles: dict[str, str] = field(default_factory=dict)

    def add_key(self, label: str, pem: str) -> None:
        for index, line in enumerate(pem_body_lines(pem)):
            # The last body line of a PEM can be a few characters: too short to mean anything.
            if len(line) >= 16:
                self.needles[f"{label} PEM line {index}"] = line

    def add_token(self, label: str, token: str) -> None:
        self.needles[f"{label} access token"] = token
        parts = token.split(".")
        if len(parts) == 3 and len(parts[2]) >= 16:
            self.needles[f"{label} token signature"] = parts[2]

    def found_in(self, haystack: str | bytes) -> list[str]:
        """Labels of the secrets present in ``haystack``."""
        text = haystack.decode("utf-8", "replace") if isinstance(haystack, bytes) else haystack
        # JSON logs escape "/" and "+" differently across writers; check the raw and the
        # \u-escaped spellings.
        hits = []
        for label, needle in self.needles.items():
            escaped = needle.replace("/", "\\/").replace("+", "\\u002b")
            if needle in text or escaped in text:
                hits.append(label)
        return hits


def error_text(response: Any) -> str:
    """The ``errors`` of an OpenBao error body as one string ('' when there are none)."""
    try:
        body = response.json()
    except ValueError:
        return str(response.text)
    errors = body.get("errors") if isinstance(body, dict) else None
    return "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
