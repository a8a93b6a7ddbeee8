"""Telemetry's cost on the hot path (issue 5): warm ``creds`` with telemetry on and off.

Two catalog entries of the same plugin in one OpenBao: ``skyflow`` with ``ENV=dev`` (no
telemetry at all) and ``skyflow-otel`` exporting traces (every request sampled) and metrics
over OTLP/HTTP to a local sink. Runs alternate between the two so drift hits both alike.
"""

from __future__ import annotations

import statistics

from bench.stack import SKYFLOW_LAUNCHER, bench_stack
from bench.wrk import run_wrk
from skyflow_devtools.otlp import otlp_sink

SECONDS = 8
ROUNDS = 3


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


def run() -> str:
    """Run the comparison; return its Markdown section."""
    with otlp_sink() as sink:
        plugins = {
            "skyflow": (SKYFLOW_LAUNCHER, {"ENV": "dev"}),
            "skyflow-otel": (SKYFLOW_LAUNCHER, telemetry_on_env(sink.endpoint)),
        }
        with bench_stack(plugins) as stack:
            paths = {
                "off (ENV=dev)": stack.add_skyflow_mounts("skyflow", "off")[0],
                "on (traces + metrics)": stack.add_skyflow_mounts("skyflow-otel", "on")[0],
            }
            token = stack.bao.root_token
            lines = [
                "## Telemetry on the hot path (issue 5)",
                "",
                f"Warm `creds` reads, {ROUNDS} alternating rounds of {SECONDS} s per setting; "
                "medians of the rounds.",
                "",
                "| connections | telemetry | req/s | p50 ms | throughput vs off | p50 vs off |",
                "|---|---|---|---|---|---|",
            ]
            for connections in (1, 16):
                rps: dict[str, list[float]] = {name: [] for name in paths}
                p50: dict[str, list[float]] = {name: [] for name in paths}
                for mount in paths.values():
                    url = stack.url(f"{mount}/creds/producer")
                    run_wrk(url, token, connections=connections, seconds=2)  # warm-up
                for _ in range(ROUNDS):
                    for name, mount in paths.items():
                        url = stack.url(f"{mount}/creds/producer")
                        result = run_wrk(url, token, connections=connections, seconds=SECONDS)
                        rps[name].append(result.rps)
                        p50[name].append(result.p50_ms)
                off_rps = statistics.median(rps["off (ENV=dev)"])
                off_p50 = statistics.median(p50["off (ENV=dev)"])
                for name in paths:
                    r, p = statistics.median(rps[name]), statistics.median(p50[name])
                    lines.append(
                        f"| {connections} | {name} | {r:,.0f} | {p:.2f} | {r / off_rps:.2f} "
                        f"| {p / off_p50:.2f} |"
                    )
    lines += ["", "Target: with telemetry on, within 5% of off (issue 12; 10% in issue 5).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
