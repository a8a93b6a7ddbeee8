"""The stack both the e2e and the reliability suites run against: a real OpenBao with the
Skyflow plugin registered, and the Skyflow emulator over HTTPS that it trusts.

Each suite's conftest.py builds its module-scoped ``stack`` fixture with ``with
start_stack(...)`` and the options it needs (an operator's install or a plain launcher,
raft storage, the file audit device, a second catalog entry with a short deadline).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from skyflow_devtools.catalog import PluginInfo, install_plugin, python_launcher
from skyflow_devtools.client import BaoClient
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.ports import free_port
from skyflow_devtools.processes import plugin_pids, poll_until
from skyflow_emulator.lifecycle import Closeable
from skyflow_emulator.process import EmulatorAdmin, EmulatorProcess
from skyflow_vault_plugin.install import install

PLUGIN_NAME = "skyflow"
PLUGIN_LAUNCHER = python_launcher("skyflow_vault_plugin.cli")
"""A plain launcher (no pinning), for catalog entries registered with their own env."""
FAST_PLUGIN = "skyflow-fast"
"""A second catalog entry of the same plugin with ``SKYFLOW_REQUEST_DEADLINE=3``."""
FAST_DEADLINE = 3.0


@dataclass
class Stack(Closeable):
    """A running OpenBao with the plugin registered, and the emulator it trusts; ``with``
    closes both."""

    bao: OpenBaoServer
    emulator: EmulatorProcess
    credentials_dir: Path
    """The server's ``SKYFLOW_CREDENTIALS_DIR``: mount ``P`` reads files under ``<it>/P/``."""
    dead_host: str
    """``127.0.0.1:<port>`` on the token-host allow-list where nothing listens."""
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    """The catalog entries installed, by name."""

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


def start_stack(
    work_dir: Path,
    *,
    server_env: Mapping[str, str] | None = None,
    as_operator: bool = False,
    raft: bool = False,
    audit_log: bool = False,
    fast_plugin: bool = False,
) -> Stack:
    """Start the emulator and an OpenBao (dev, or single-node raft) that trusts it, then
    install the plugin: with ``as_operator`` through ``skyflow-vault-plugin install`` (the
    pinning launcher), else with :data:`PLUGIN_LAUNCHER`; ``fast_plugin`` also registers
    :data:`FAST_PLUGIN`."""
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
        factory = OpenBaoServer.raft if raft else OpenBaoServer.dev
        bao = factory(work_dir / "bao", env=env, audit_log=audit_log)
        bao.start()
    except BaseException:
        emulator.stop()
        raise
    stack = Stack(bao, emulator, credentials, dead_host)
    try:
        stack.plugins[PLUGIN_NAME] = (
            install_as_operator(bao, PLUGIN_NAME)
            if as_operator
            else install_plugin(bao, name=PLUGIN_NAME, executable=PLUGIN_LAUNCHER)
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
