"""Telemetry's cost on the hot path (issue 5): warm ``creds`` with telemetry on and off.

Two catalog entries of the same plugin in one OpenBao: ``skyflow`` with ``ENV=dev`` (no
telemetry at all) and ``skyflow-otel`` exporting traces (every request sampled) and metrics
over OTLP/HTTP to a local sink. Runs take turns, each round in the reverse order of the one
before, and each round's on/off ratio is taken from its own pair of runs (bench/rounds.py):
on this shared machine the throughput of one minute can differ from the next by more than
the 5% measured here.
"""

from __future__ import annotations

import statistics

from bench.plugin_read import SECONDS, Measured, measure
from bench.rounds import paired_ratio, round_order
from bench.stack import SKYFLOW_LAUNCHER, bench_stack
from bench.wrk import run_wrk
from skyflow_devtools.otlp import otlp_sink

ROUNDS = 6
OFF, ON = "off (ENV=dev)", "on (traces + metrics)"
PLUGINS = {OFF: "skyflow", ON: "skyflow-otel"}


def telemetry_on_env(endpoint: str) -> dict[str, str]:
    """The plugin's environment with traces (every request sampled) and metrics exported
    over OTLP/HTTP to ``endpoint``."""
    return {
        "ENV": "prod",
        "TELEMETRY_ENABLED": "true",
        "TELEMETRY_SAMPLE_RATE": "1.0",
        "TELEMETRY_METRICS_EXPORT_INTERVAL": "5s",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
    }


def _row(connections: int, name: str, rounds: list[Measured], off: list[Measured]) -> str:
    rps = statistics.median(m.load.rps for m in rounds)
    p50 = statistics.median(m.load.p50_ms for m in rounds)
    plugin = statistics.median(m.plugin_cpu_ms for m in rounds)
    host = statistics.median(m.host_cpu_ms for m in rounds)
    throughput = paired_ratio([m.load.rps for m in rounds], [m.load.rps for m in off])
    latency = paired_ratio([m.load.p50_ms for m in rounds], [m.load.p50_ms for m in off])
    return (
        f"| {connections} | {name} | {rps:,.0f} | {p50:.2f} | {throughput:.2f} | "
        f"{latency:.2f} | {plugin:.3f} | {host:.3f} |"
    )


def run() -> str:
    """Run the comparison; return its Markdown section."""
    with otlp_sink() as sink:
        plugins = {
            PLUGINS[OFF]: (SKYFLOW_LAUNCHER, {"ENV": "dev"}),
            PLUGINS[ON]: (SKYFLOW_LAUNCHER, telemetry_on_env(sink.endpoint)),
        }
        with bench_stack(plugins) as stack:
            paths = {
                OFF: stack.add_skyflow_mounts(PLUGINS[OFF], "off")[0] + "/creds/producer",
                ON: stack.add_skyflow_mounts(PLUGINS[ON], "on")[0] + "/creds/producer",
            }
            token = stack.bao.root_token
            lines = [
                "## Telemetry on the hot path (issue 5)",
                "",
                f"Warm `creds` reads, {ROUNDS} rounds of {SECONDS} s per setting, each round in "
                "the reverse order of the one before; medians of the rounds, and the ratios as "
                "the median of each round's on/off pair (bench/rounds.py). CPU per request of "
                "the plugin and of OpenBao, which moves less with the machine's load than "
                "throughput does.",
                "",
                "| connections | telemetry | req/s | p50 ms | throughput vs off | p50 vs off "
                "| plugin CPU ms/req | OpenBao CPU ms/req |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for connections in (1, 16):
                for path in paths.values():
                    run_wrk(stack.url(path), token, connections=connections, seconds=2)  # warm
                measured: dict[str, list[Measured]] = {name: [] for name in paths}
                for index in range(ROUNDS):
                    for name in round_order(list(paths), index):
                        measured[name].append(
                            measure(stack, paths[name], PLUGINS[name], connections)
                        )
                for name in paths:
                    lines.append(_row(connections, name, measured[name], measured[OFF]))
    lines += ["", "Target: with telemetry on, within 5% of off (issue 12; 10% in issue 5).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
