"""Shared fixtures for end-to-end tests: a real OpenBao with the Skyflow plugin installed as
an operator would, and the Skyflow emulator over real HTTPS.

Each test gets fresh mounts (``unit_mount``) so tests stay independent while the server and
the emulator are started once per module (they cost seconds each).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skyflow_devtools.catalog import PluginInfo, python_launcher
from skyflow_devtools.client import BaoClient
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.ports import free_port
from skyflow_emulator.process import EmulatorAdmin, EmulatorProcess
from skyflow_vault_plugin.install import install

PLUGIN_NAME = "skyflow"
PLUGIN_LAUNCHER = python_launcher("skyflow_vault_plugin.cli")
"""A plain launcher, for modules that register a second catalog entry with other env."""


@dataclass
class SkyflowStack:
    """A running OpenBao with the plugin registered, and the emulator it trusts."""

    bao: OpenBaoServer
    emulator: EmulatorProcess
    credentials_dir: Path
    """The server's ``SKYFLOW_CREDENTIALS_DIR``: mount ``P`` reads files under ``<it>/P/``."""
    dead_host: str
    """``127.0.0.1:<port>`` on the token-host allow-list where nothing listens."""

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
        credentials: dict[str, str] | None = None,
        roles: dict[str, list[str]] | None = None,
    ) -> str:
        """Enable a fresh mount, configure it with ``credentials`` (a new account when None)
        and create ``roles``; returns the mount path (no trailing slash)."""
        path = f"{prefix}-{secrets.token_hex(3)}"
        client = self.client()
        client.enable_secrets(path, PLUGIN_NAME)
        client.write(
            f"{path}/config",
            {"credentials_json": json.dumps(credentials or self.new_account())},
        )
        for name, role_ids in (roles or {}).items():
            client.write(f"{path}/roles/{name}", {"role_ids": role_ids})
        return path


def install_as_operator(bao: OpenBaoServer, name: str) -> PluginInfo:
    """``skyflow-vault-plugin install`` into the server's plugin directory (the verifying
    launcher), then registration by sha256, as docs/operations.md tells an operator."""
    installation = install(bao.plugin_dir, name)
    bao.client().register_plugin(name, sha256=installation.sha256, command=name)
    info = PluginInfo(
        name=name,
        sha256=installation.sha256,
        path=installation.path,
        version=None,
        command=name,
    )
    bao.record_plugin(info)
    return info


def start_stack(work_dir: Path, *, server_env: dict[str, str] | None = None) -> SkyflowStack:
    """Start the emulator and an OpenBao dev server that trusts it, and install the plugin."""
    credentials = work_dir / "credentials"  # SKYFLOW_CREDENTIALS_DIR
    credentials.mkdir(parents=True, exist_ok=True)
    dead_host = f"127.0.0.1:{free_port()}"
    emulator = EmulatorProcess(state_dir=work_dir / "emulator").start()
    try:
        env = {
            **emulator.plugin_env(),
            "SKYFLOW_CREDENTIALS_DIR": str(credentials),
            **(server_env or {}),
        }
        env["SKYFLOW_ALLOWED_TOKEN_HOSTS"] += f",{dead_host}"
        bao = OpenBaoServer.dev(work_dir / "bao", env=env)
        bao.start()
    except BaseException:
        emulator.stop()
        raise
    try:
        install_as_operator(bao, PLUGIN_NAME)
    except BaseException:
        bao.close()
        emulator.stop()
        raise
    return SkyflowStack(bao, emulator, credentials, dead_host)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SkyflowStack]:
    """OpenBao + plugin + emulator, shared by a module's tests."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield running
    finally:
        running.bao.close()
        running.emulator.stop()


@pytest.fixture
def fresh_emulator(stack: SkyflowStack) -> Iterator[EmulatorAdmin]:
    """The emulator with its faults cleared before and after the test."""
    stack.admin.reset()
    yield stack.admin
    stack.admin.reset()


UnitMount = Callable[..., str]


@pytest.fixture
def unit_mount(stack: SkyflowStack) -> UnitMount:
    """Factory for fresh, configured mounts (see :meth:`SkyflowStack.mount`)."""
    return stack.mount
