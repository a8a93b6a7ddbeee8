"""Plugin reads against builtin kv-v2 reads on the same OpenBao, with wrk.

Three reads are compared at 1 and 16 connections: a kv-v2 read (the baseline), the SDK's
example plugin read (resolve-path, the read, and a storage get back to the host), and the
engine's warm ``creds`` read (resolve-path and the read; the token comes from memory).
Also: the plugin's resident memory while serving three mounts, and exec-to-handshake.
"""

from __future__ import annotations

import statistics
import sys

from bench.fakehost import host_certificate_pem, host_env, time_to_handshake
from bench.stack import bench_stack
from bench.wrk import LoadResult, run_wrk

SECONDS = 10
CONNECTIONS = (1, 16)


def _row(name: str, result: LoadResult, base: LoadResult) -> str:
    return (
        f"| {name} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | "
        f"{result.rps / base.rps:.2f} | {result.p50_ms / base.p50_ms:.2f} | {result.errors} |"
    )


def handshake_times(runs: int = 10) -> dict[str, float]:
    """Median exec-to-handshake (ms) for the plugin and for a bare interpreter."""
    env = host_env(host_certificate_pem())
    py = sys.executable
    plugin = "import sys; from skyflow_vault_plugin.cli import main; sys.exit(main())"
    commands = {
        "skyflow-vault-plugin": [py, "-c", plugin],
        "bare python printing a line": [py, "-c", "print('1|5|unix|x|grpc|', flush=True)"],
    }
    return {
        name: statistics.median(time_to_handshake(cmd, env) for _ in range(runs)) * 1000
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
            "kv-v2 read (baseline)": "secret/data/bench",
            "SDK example plugin read": "kvpy/kv/bench",
            "skyflow warm creds read": f"{mounts[0]}/creds/producer",
        }
        token = stack.bao.root_token
        for connections in CONNECTIONS:
            results = {}
            for name, path in targets.items():
                run_wrk(stack.url(path), token, connections=connections, seconds=2)  # warm-up
                results[name] = run_wrk(
                    stack.url(path), token, connections=connections, seconds=SECONDS
                )
            base = results["kv-v2 read (baseline)"]
            lines += [
                f"### {connections} connection(s), {SECONDS} s each",
                "",
                "| read | req/s | p50 ms | p99 ms | throughput ratio | p50 ratio | non-200 |",
                "|---|---|---|---|---|---|---|",
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
