"""Plugin reads against builtin kv-v2 reads and the Go floor on the same OpenBao, with wrk.

Six reads are compared at 1 and 16 connections: a kv-v2 read (the baseline), a read of
``nullgo`` (a zero-work Go plugin: the floor any external plugin can reach, see
bench/floor.py), a read of ``nullgo`` built with the engine's audit line (one hclog line
per request, as a Go plugin writes it: the floor for a plugin that logs a line per
request), the engine's warm ``creds`` read (resolve-path and the read; the token comes
from memory), the same read from a catalog entry with the audit line off
(``SKYFLOW_AUDIT_LOG=false``; nullgo logs nothing, and the host parses every line a plugin
logs) and the SDK's example plugin read (resolve-path, the read, and a storage get back to
the host). Under each table, like for like: the ``creds`` read with its line against
nullgo with the same line, and without it against nullgo.
Also: the plugin's resident memory while serving three mounts, and exec-to-handshake (in
milliseconds, and through the launcher in instructions: bench/startup_count.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.floor import build_floor
from bench.rounds import paired_ratio, round_order
from bench.stack import DEFAULT_PLUGINS, SKYFLOW_LAUNCHER, BenchStack, bench_stack
from bench.startup_count import count_launcher_start
from bench.wrk import LoadResult, run_wrk
from skyflow_devtools.processes import plugin_pids
from skyflow_vault_plugin.install import install
from skyflow_vault_plugin.startup import (
    StartupSample,
    fake_host_environment,
    measure_startup,
    summarize,
)

SECONDS = 5
ROUNDS = 6
CONNECTIONS = (1, 16)
NULLGO = "nullgo"
KV = "kv-v2 read (baseline)"
FLOOR = "nullgo read (Go floor)"
NULLGO_AUDIT = "nullgo-audit"
FLOOR_AUDIT = "nullgo read with the audit line (Go)"
CREDS = "skyflow warm creds read"
CREDS_QUIET = "skyflow warm creds read, audit line off"
QUIET_PLUGIN = "skyflow-noaudit"


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


def _combine(rounds: list[Measured]) -> Measured:
    """Medians over alternating rounds (drift from other load hits every target alike)."""
    load = LoadResult(
        statistics.median(m.load.rps for m in rounds),
        statistics.median(m.load.p50_ms for m in rounds),
        statistics.median(m.load.p99_ms for m in rounds),
        sum(m.load.errors for m in rounds),
    )
    return Measured(
        load,
        statistics.median(m.host_cpu_ms for m in rounds),
        statistics.median(m.plugin_cpu_ms for m in rounds),
    )


def _ratio(rounds: list[Measured], base: list[Measured] | None, attr: str) -> str:
    if base is None:
        return "n/a"
    values = [getattr(m.load, attr) for m in rounds]
    return f"{paired_ratio(values, [getattr(m.load, attr) for m in base]):.2f}"


def _row(
    name: str, rounds: list[Measured], kv: list[Measured], floor: list[Measured] | None
) -> str:
    """A read's medians, and its ratios to kv-v2 and nullgo as the median of each round's."""
    result = _combine(rounds)
    load = result.load
    return (
        f"| {name} | {load.rps:,.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | "
        f"{_ratio(rounds, kv, 'rps')} | {_ratio(rounds, floor, 'rps')} | "
        f"{_ratio(rounds, floor, 'p50_ms')} | "
        f"{result.host_cpu_ms:.2f} | {result.plugin_cpu_ms:.2f} | {load.errors} |"
    )


def _like_for_like(rounds: dict[str, list[Measured]]) -> list[str]:
    """The ``creds`` read against the Go floor that does what it does about the audit line:
    with its line against nullgo with the same line, without it against nullgo."""
    pairs = [(CREDS, FLOOR_AUDIT, "with the audit line"), (CREDS_QUIET, FLOOR, "without it")]
    found = [
        f"{label}: {_ratio(rounds[ours], rounds[go], 'rps')}x the Go floor's throughput, "
        f"{_ratio(rounds[ours], rounds[go], 'p50_ms')}x its p50"
        for ours, go, label in pairs
        if ours in rounds and go in rounds
    ]
    return [f"Like for like, the warm `creds` read {'; '.join(found)}.", ""] if found else []


HANDSHAKE_RUNS = 20


def handshake_times(
    launcher: Path, nullgo: Path | None, runs: int = HANDSHAKE_RUNS
) -> tuple[dict[str, float], list[StartupSample]]:
    """Median exec-to-handshake (ms) for the plugin (plain and through ``launcher``), nullgo
    and a bare interpreter, the executables taking turns (a burst of load then weighs on all
    of them alike); and the launcher's samples, with its own report of its check."""
    env = fake_host_environment()
    py = sys.executable
    plugin = "import sys; from skyflow_vault_plugin.cli import main; sys.exit(main())"
    commands = {
        "skyflow-vault-plugin": [py, "-c", plugin],
        "bare python printing a line": [py, "-c", "print('1|5|unix|x|grpc|', flush=True)"],
    }
    if nullgo is not None:
        commands["nullgo (Go floor)"] = [str(nullgo)]
    commands["skyflow-vault-plugin through its verifying launcher"] = [str(launcher)]
    samples: dict[str, list[StartupSample]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            samples[name].append(measure_startup(cmd, env=env))
    medians = {
        name: statistics.median(s.handshake_ms for s in values) for name, values in samples.items()
    }
    return medians, samples["skyflow-vault-plugin through its verifying launcher"]


def _launcher_report(samples: list[StartupSample]) -> str:
    """The launcher's own report, medians over ``samples``: its check's time and the
    imports' wait for its copies of the native libraries."""
    stats = summarize(samples)
    verify, wait = stats["verify_median_ms"], stats["native_wait_median_ms"]
    most = stats["native_wait_max_ms"]
    if verify is None or wait is None or most is None:
        return "The launcher reported no timing."
    return (
        f"The launcher's own report (medians): its check ended {verify:.0f}"
        " ms after its start, alongside the imports, which waited "
        f"{wait:.1f} ms in all for its copies of native libraries "
        f"(the most in one start: {most:.1f} ms)."
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def run() -> str:
    """Run the benchmark; return its Markdown section."""
    lines = ["## Plugin reads against kv-v2 and the Go floor (issues 2, 4, 12)", ""]
    floor = build_floor()
    # Without nullgo (no anchor, no toolchain) there is nothing to add the line to.
    floor_audit = build_floor(audit_line=True) if floor.executable is not None else floor
    plugins = dict(DEFAULT_PLUGINS)
    plugins[QUIET_PLUGIN] = (SKYFLOW_LAUNCHER, {"ENV": "dev", "SKYFLOW_AUDIT_LOG": "false"})
    if floor.executable is not None:
        plugins[NULLGO] = (floor.executable, {})
    if floor_audit.executable is not None:
        plugins[NULLGO_AUDIT] = (floor_audit.executable, {})
    lines += [
        f"Floor: {'; '.join(dict.fromkeys([floor.note, floor_audit.note]))} (bench/floor.py). "
        f"Each read runs once per round for {SECONDS} s, {ROUNDS} rounds, "
        "each round in the reverse order of the one before; the table gives the medians of "
        "the rounds, and each ratio as the median of the rounds' own ratios "
        "(bench/rounds.py). Ratios compare reads measured in the same run on one server.",
        "",
        f"Before: {_load()}.",
        "",
    ]
    with bench_stack(plugins) as stack:
        client = stack.bao.client()
        client.write("secret/data/bench", {"data": {"card": "4111"}})
        client.enable_secrets("kvpy", "kvpy")
        client.write("kvpy/kv/bench", {"value": {"card": "4111"}})
        mounts = stack.add_skyflow_mounts("skyflow", "skyflow")
        client.read(f"{mounts[0]}/creds/producer")  # warm the token cache
        targets: dict[str, tuple[str, str | None]] = {KV: ("secret/data/bench", None)}
        if floor.executable is not None:
            client.enable_secrets(NULLGO, NULLGO)
            targets[FLOOR] = (f"{NULLGO}/creds/anything", NULLGO)
        if floor_audit.executable is not None:
            client.enable_secrets(NULLGO_AUDIT, NULLGO_AUDIT)
            targets[FLOOR_AUDIT] = (f"{NULLGO_AUDIT}/creds/producer", NULLGO_AUDIT)
        targets[CREDS] = (f"{mounts[0]}/creds/producer", "skyflow")
        quiet = stack.add_skyflow_mounts(QUIET_PLUGIN, QUIET_PLUGIN)[0]
        client.read(f"{quiet}/creds/producer")
        targets[CREDS_QUIET] = (f"{quiet}/creds/producer", QUIET_PLUGIN)
        targets["SDK example plugin read"] = ("kvpy/kv/bench", "kvpy")
        token = stack.bao.root_token
        for connections in CONNECTIONS:
            rounds: dict[str, list[Measured]] = {name: [] for name in targets}
            for path, _ in targets.values():
                run_wrk(stack.url(path), token, connections=connections, seconds=2)  # warm-up
            for index in range(ROUNDS):
                for name in round_order(list(targets), index):
                    path, plugin = targets[name]
                    rounds[name].append(measure(stack, path, plugin, connections))
            floor_rounds = rounds.get(FLOOR)
            lines += [
                f"### {connections} connection(s)",
                "",
                "| read | req/s | p50 ms | p99 ms | rps vs kv-v2 | rps vs nullgo "
                "| p50 vs nullgo | OpenBao CPU ms/req | plugin CPU ms/req | non-200 |",
                "|---|---|---|---|---|---|---|---|---|---|",
                *(
                    _row(name, measured, rounds[KV], floor_rounds)
                    for name, measured in rounds.items()
                ),
                "",
                *_like_for_like(rounds),
            ]
        for mount in mounts:
            client.read(f"{mount}/creds/producer")
        rss = stack.plugin_rss_kib("skyflow")
    lines += [
        f"After: {_load()}.",
        "",
        f"Plugin resident memory serving three mounts (after the runs): {rss / 1024:.1f} MiB.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as plugin_dir:
        launcher = install(Path(plugin_dir), "skyflow-vault-plugin").path
        times, launched = handshake_times(launcher, floor.executable)
        counted = count_launcher_start(launcher)
    lines += [
        f"Exec-to-handshake (median of {HANDSHAKE_RUNS} starts each, the executables taking "
        "turns; automatic mTLS with a P-521 host certificate):",
        "",
    ]
    lines += [f"- {name}: {ms:.0f} ms" for name, ms in times.items()]
    lines += ["", _launcher_report(launched), ""]
    figure = f"{counted.instructions / 1e6:.1f}M" if counted.instructions is not None else "n/a"
    lines += [
        "The same start through the verifying launcher in instructions, which the machine's "
        "load does not move (exec to the handshake line and the exit on the host's SIGTERM; "
        f"{counted.note}): {figure}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
