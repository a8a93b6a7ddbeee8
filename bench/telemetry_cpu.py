"""Telemetry's CPU per request inside one process, apart from the transport and the host.

The instrumented handler of a warm ``creds`` read (it names the role and notes a cache hit)
runs ``REQUESTS`` times with telemetry off (``ENV=dev``: only the audit line) and on (every
request traced, metrics on, OTLP/HTTP exports to a sink in another process, so that the
sink's CPU is not counted). CPU is the process's (``time.process_time``: the serving thread
and the exporter threads), pending exports flushed inside the measurement. Settings
alternate; the median of the rounds is reported.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.telemetry import telemetry_on_env
from skyflow_vault_plugin.skyflow.telemetry.disabled import Telemetry
from skyflow_vault_plugin.skyflow.telemetry.names import TOKEN_GENERATE
from skyflow_vault_plugin.skyflow.telemetry.otel import OTelTelemetry
from skyflow_vault_plugin.skyflow.telemetry.scope import current_scope, note_cache
from skyflow_vault_plugin.skyflow.telemetry.settings import TelemetrySettings
from vault_plugin_sdk.framework import FieldData, Request, Response
from vault_plugin_sdk.plugin.hclog import configure_logging

REQUESTS = 20_000
ROUNDS = 3
_SINK = (
    "import sys\n"
    "from skyflow_devtools.otlp import otlp_sink\n"
    "with otlp_sink() as sink:\n"
    "    print(sink.endpoint, flush=True)\n"
    "    sys.stdin.read()\n"
)


@contextmanager
def _sink_process() -> Iterator[str]:
    sink = subprocess.Popen(
        [sys.executable, "-c", _SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None
        yield sink.stdout.readline().strip()
    finally:
        sink.kill()
        sink.wait()


async def _warm_read(req: Request, data: FieldData) -> Response:
    scope = current_scope()
    if scope is not None:
        scope.role = "producer"
    note_cache("hit")
    return Response(data={"access_token": "redacted", "token_type": "Bearer"})


def _telemetry(on: bool, endpoint: str) -> Telemetry:
    if not on:
        return Telemetry(TelemetrySettings.from_env({"ENV": "dev"}))
    return OTelTelemetry(TelemetrySettings.from_env(telemetry_on_env(endpoint)))


async def _cpu_per_request(telemetry: Telemetry) -> float:
    handler = telemetry.instrument(TOKEN_GENERATE, _warm_read)
    req = Request(
        operation="read",
        path="creds/producer",
        storage=None,  # type: ignore[arg-type]  # the handler never touches storage
        id="c5daebfa-d734-578f-549c-3c3087ba5d90",
        mount_point="skyflow/insurance/",
        remote_addr="127.0.0.1",
        match={"name": "producer"},
    )
    data = FieldData({}, {})
    for _ in range(REQUESTS // 10):  # warm-up: imports, first export
        await handler(req, data)
    await telemetry.flush()
    started = time.process_time()
    for _ in range(REQUESTS):
        await handler(req, data)
    await telemetry.flush()
    return (time.process_time() - started) / REQUESTS * 1e6


def run() -> str:
    """Run the comparison; return its Markdown section."""
    configure_logging("info")  # the audit line as the plugin writes it (stderr) ...
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115  # ... into the void
    cost: dict[bool, list[float]] = {False: [], True: []}
    with _sink_process() as endpoint:
        for _ in range(ROUNDS):
            for on in (False, True):
                telemetry = _telemetry(on, endpoint)
                cost[on].append(asyncio.run(_cpu_per_request(telemetry)))
                telemetry.shutdown()
    off_us, on_us = statistics.median(cost[False]), statistics.median(cost[True])
    return "\n".join(
        [
            "## Telemetry's CPU per request, in one process",
            "",
            f"The instrumented handler of a warm `creds` read, {REQUESTS:,} calls per setting, "
            f"{ROUNDS} alternating rounds (medians); CPU of every thread of the process, "
            "exports included (bench/telemetry_cpu.py).",
            "",
            "| telemetry | CPU µs per request | telemetry's own µs |",
            "|---|---|---|",
            f"| off (`ENV=dev`, the audit line only) | {off_us:.1f} | — |",
            f"| on (traces + metrics, every request) | {on_us:.1f} | {on_us - off_us:.1f} |",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
