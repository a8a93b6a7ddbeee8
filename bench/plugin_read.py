"""Plugin reads against builtin kv-v2 reads on the same OpenBao, with wrk.

Three reads are compared at 1 and 16 connections: a kv-v2 read (the baseline), the SDK's
example plugin read (resolve-path, the read, and a storage get back to the host), and the
engine's warm ``creds`` read (resolve-path and the read; the token comes from memory).
Also: the plugin's resident memory while serving three mounts, and exec-to-handshake.
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.stack import BenchStack, bench_stack
from bench.wrk import LoadResult, run_wrk
from skyflow_devtools.openbao import plugin_pids
from skyflow_vault_plugin.install import fake_host_environment, measure_startup

SECONDS = 10
CONNECTIONS = (1, 16)


@dataclass(frozen=True)
class Measured:
    load: LoadResult
    host_cpu_ms: float  # OpenBao CPU time per request
    plugin_cpu_ms: float  # plugin CPU time per request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(stack: BenchStack, path: str, plugin: str | None, connections: int) -> Measured:
    """One wrk run with the CPU time the server and the plugin spent on it."""
    bao_pid = stack.bao.pid
    assert bao_pid is not None
    plugin_pid = plugin_pids(stack.bao, plugin)[0] if plugin else None
    host_before = cpu_seconds(bao_pid)
    plugin_before = cpu_seconds(plugin_pid) if plugin_pid else 0.0
    load = run_wrk(stack.url(path), stack.bao.root_token, connections=connections, seconds=SECONDS)
    requests = max(1.0, load.rps * SECONDS)
    host = (cpu_seconds(bao_pid) - host_before) / requests * 1000
    plugin_cpu = (cpu_seconds(plugin_pid) - plugin_before) / requests * 1000 if plugin_pid else 0.0
    return Measured(load, host, plugin_cpu)


def _row(name: str, measured: Measured, base: LoadResult) -> str:
    result = measured.load
    return (
        f"| {name} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | "
        f"{result.rps / base.rps:.2f} | {result.p50_ms / base.p50_ms:.2f} | "
        f"{measured.host_cpu_ms:.2f} | {measured.plugin_cpu_ms:.2f} | {result.errors} |"
    )


def handshake_times(runs: int = 10) -> dict[str, float]:
    """Median exec-to-handshake (ms) for the plugin and for a bare interpreter."""
    env = fake_host_environment()
    py = sys.executable
    plugin = "import sys; from skyflow_vault_plugin.cli import main; sys.exit(main())"
    commands = {
        "skyflow-vault-plugin": [py, "-c", plugin],
        "bare python printing a line": [py, "-c", "print('1|5|unix|x|grpc|', flush=True)"],
    }
    return {
        name: statistics.median(measure_startup(cmd, env=env).handshake_ms for _ in range(runs))
        for name, cmd in commands.items()
    }


def run() -> str:
    """Run the benchmark; return its Markdown section."""
    lines = ["## Plugin reads against kv-v2 (issue 2, issue 4 benchmark 1)", ""]
    with bench_stack() as stack:
        client = stack.bao.client()
        client.write("secret/data/bench", {"data": {"card": "4111"}})
        client.enable_secrets("kvpy", "kvpy")
        client.write("kvpy/kv/bench", {"value": {"card": "4111"}})
        mounts = stack.add_skyflow_mounts("skyflow", "skyflow")
        client.read(f"{mounts[0]}/creds/producer")  # warm the token cache
        targets = {
            "kv-v2 read (baseline)": ("secret/data/bench", None),
            "SDK example plugin read": ("kvpy/kv/bench", "kvpy"),
            "skyflow warm creds read": (f"{mounts[0]}/creds/producer", "skyflow"),
        }
        token = stack.bao.root_token
        for connections in CONNECTIONS:
            results = {}
            for name, (path, plugin) in targets.items():
                run_wrk(stack.url(path), token, connections=connections, seconds=2)  # warm-up
                results[name] = measure(stack, path, plugin, connections)
            base = results["kv-v2 read (baseline)"].load
            lines += [
                f"### {connections} connection(s), {SECONDS} s each",
                "",
                "| read | req/s | p50 ms | p99 ms | throughput ratio | p50 ratio "
                "| OpenBao CPU ms/req | plugin CPU ms/req | non-200 |",
                "|---|---|---|---|---|---|---|---|---|",
                *(_row(name, result, base) for name, result in results.items()),
                "",
            ]
        for mount in mounts:
            client.read(f"{mount}/creds/producer")
        rss = stack.plugin_rss_kib("skyflow")
    lines += [
        f"Plugin resident memory serving three mounts (after the runs): {rss / 1024:.1f} MiB.",
        "",
    ]
    times = handshake_times()
    lines += ["Exec-to-handshake (median of 10, automatic mTLS with a P-521 host certificate):", ""]
    lines += [f"- {name}: {ms:.0f} ms" for name, ms in times.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
