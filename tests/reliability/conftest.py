"""Shared pieces of the reliability suite: a real OpenBao with the Skyflow plugin installed the
way an operator does it (sha256-pinned catalog entry), the Skyflow emulator over HTTPS, and
helpers that look for secrets without ever printing them.

The e2e suite's ``conftest`` cannot be imported (pytest's importlib mode), so the small
start-up logic is repeated here with the options this suite needs: extra catalog entries with
their own environment, raft storage, the file audit device.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from skyflow_devtools.catalog import PluginInfo, install_plugin, python_launcher
from skyflow_devtools.client import BaoClient
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import plugin_pids, poll_until
from skyflow_emulator.process import EmulatorAdmin, EmulatorProcess

PLUGIN_NAME = "skyflow"
PLUGIN_LAUNCHER = python_launcher("skyflow_vault_plugin.cli")
FAST_PLUGIN = "skyflow-fast"
"""A second catalog entry of the same plugin with ``SKYFLOW_REQUEST_DEADLINE=3``."""
FAST_DEADLINE = 3.0


# -------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """A running OpenBao with the plugin registered, and the emulator it trusts."""

    bao: OpenBaoServer
    emulator: EmulatorProcess
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    credentials_dir: Path = Path("/nonexistent")
    """The server's ``SKYFLOW_CREDENTIALS_DIR``: mount ``P`` reads files under ``<it>/P/``."""

    @property
    def admin(self) -> EmulatorAdmin:
        return self.emulator.admin

    def client(self, token: str | None = None) -> BaoClient:
        return self.bao.client(token)

    def new_account(self) -> dict[str, str]:
        """Fresh service-account credentials issued by the emulator."""
        return self.admin.create_account()

    def mount(
        self,
        prefix: str = "skyflow/unit",
        *,
        plugin: str = PLUGIN_NAME,
        credentials: Mapping[str, str] | None = None,
        roles: Mapping[str, list[str]] | None = None,
    ) -> str:
        """Enable a fresh mount of ``plugin``, configure it with ``credentials`` (a new
        account when None), create ``roles``; return the mount path (no trailing slash)."""
        path = f"{prefix}-{secrets.token_hex(3)}"
        client = self.client()
        client.enable_secrets(path, plugin)
        client.write(
            f"{path}/config",
            {"credentials_json": json.dumps(dict(credentials or self.new_account()))},
        )
        for name, role_ids in (roles or {}).items():
            client.write(f"{path}/roles/{name}", {"role_ids": role_ids})
        return path

    def plugin_pids(self, plugin: str = PLUGIN_NAME) -> list[int]:
        """The running processes of one catalog entry."""
        return plugin_pids(self.bao, plugin)

    def plugin_pid(self, plugin: str = PLUGIN_NAME) -> int:
        """The single (multiplexed) process serving every mount of ``plugin``."""
        pids = poll_until(
            lambda: self.plugin_pids(plugin) or None, timeout=10, message=f"{plugin} process"
        )
        assert len(pids) == 1, f"expected one multiplexed {plugin} process, found {pids}"
        return pids[0]

    def close(self) -> None:
        try:
            self.bao.close()
        finally:
            self.emulator.stop()


def start_stack(
    work_dir: Path,
    *,
    server_env: Mapping[str, str] | None = None,
    raft: bool = False,
    audit_log: bool = False,
    fast_plugin: bool = False,
) -> Stack:
    """Start the emulator and an OpenBao (dev, or single-node raft) that trusts it, then
    install the plugin; ``fast_plugin`` also registers :data:`FAST_PLUGIN`."""
    credentials = work_dir / "credentials"  # SKYFLOW_CREDENTIALS_DIR
    credentials.mkdir(parents=True, exist_ok=True)
    emulator = EmulatorProcess(state_dir=work_dir / "emulator").start()
    try:
        env = {
            **emulator.plugin_env(),
            "SKYFLOW_CREDENTIALS_DIR": str(credentials),
            **(server_env or {}),
        }
        factory = OpenBaoServer.raft if raft else OpenBaoServer.dev
        bao = factory(work_dir / "bao", env=env, audit_log=audit_log)
        bao.start()
    except BaseException:
        emulator.stop()
        raise
    stack = Stack(bao, emulator, credentials_dir=credentials)
    try:
        stack.plugins[PLUGIN_NAME] = install_plugin(
            bao, name=PLUGIN_NAME, executable=PLUGIN_LAUNCHER
        )
        if fast_plugin:
            stack.plugins[FAST_PLUGIN] = install_plugin(
                bao,
                name=FAST_PLUGIN,
                executable=PLUGIN_LAUNCHER,
                filename=FAST_PLUGIN,
                env={"SKYFLOW_REQUEST_DEADLINE": str(FAST_DEADLINE)},
            )
    except BaseException:
        stack.close()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """OpenBao (dev) + plugin + emulator, shared by a module's tests."""
    running = start_stack(tmp_path_factory.mktemp("stack"), fast_plugin=True)
    try:
        yield running
    finally:
        running.close()


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
