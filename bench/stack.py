"""A benchmark stack: OpenBao (quiet logging), the emulator, and installed plugins."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from skyflow_devtools.catalog import install_plugin, python_launcher
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import plugin_pids
from skyflow_devtools.sdk_example import kv_example_launcher
from skyflow_emulator.process import EmulatorProcess

SKYFLOW_LAUNCHER = python_launcher("skyflow_vault_plugin.cli")
KV_LAUNCHER = kv_example_launcher()
UNITS = ("insurance", "lending", "clcm")
DEFAULT_PLUGINS: dict[str, tuple[bytes | Path, Mapping[str, str]]] = {
    "skyflow": (SKYFLOW_LAUNCHER, {"ENV": "dev"}),
    "kvpy": (KV_LAUNCHER, {}),
}


@dataclass
class BenchStack:
    bao: OpenBaoServer
    emulator: EmulatorProcess

    def url(self, path: str) -> str:
        return f"{self.bao.addr}/v1/{path}"

    def plugin_rss_kib(self, name: str) -> int:
        """Resident memory of the plugin process serving catalog entry ``name``."""
        pids = plugin_pids(self.bao, name)
        if len(pids) != 1:
            raise RuntimeError(f"expected one {name} process, found {pids}")
        for line in Path(f"/proc/{pids[0]}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def add_skyflow_mounts(self, plugin: str, prefix: str) -> list[str]:
        """Three configured business-unit mounts with a ``producer`` role each."""
        client = self.bao.client()
        mounts = []
        for unit in UNITS:
            mount = f"{prefix}/{unit}"
            client.enable_secrets(mount, plugin)
            account = self.emulator.admin.create_account()
            client.write(f"{mount}/config", {"credentials_json": json.dumps(account)})
            client.write(f"{mount}/roles/producer", {"role_ids": ["bench-role"]})
            mounts.append(mount)
        return mounts


@contextlib.contextmanager
def bench_stack(
    plugins: Mapping[str, tuple[bytes | Path, Mapping[str, str]]] | None = None,
) -> Iterator[BenchStack]:
    """OpenBao dev server at log level warn (debug logging would tax every request) with the
    given plugins ``{name: (launcher, env)}`` installed, and the emulator."""
    wanted = plugins or DEFAULT_PLUGINS
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = Path(scratch)
        emulator = EmulatorProcess(state_dir=work / "emulator").start()
        try:
            env = emulator.plugin_env()
            with OpenBaoServer.dev(work / "bao", env=env, log_level="warn") as bao:
                for name, (launcher, plugin_env) in wanted.items():
                    install_plugin(bao, name=name, executable=launcher, env=dict(plugin_env))
                yield BenchStack(bao, emulator)
        finally:
            emulator.stop()
