"""How long an installed plugin takes to start, as a host would see it: the timing behind
``skyflow-vault-plugin check``.

:func:`measure_startup` starts an executable with the environment a v5 host gives a plugin
(:func:`fake_host_environment`) and times it until its go-plugin handshake line; a launcher
written by ``install`` also reports how long its integrity check took.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import launcher

__all__ = [
    "StartupFailed",
    "StartupSample",
    "fake_host_environment",
    "measure_startup",
    "summarize",
]


def fake_host_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a v5 host starts a plugin with (cookie, protocol, client cert)."""
    from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE
    from vault_plugin_sdk.plugin.tls import self_signed_certificate

    # A throwaway certificate like the one a host puts in PLUGIN_CLIENT_CERT.
    host_cert = self_signed_certificate(curve="P-521", valid_for=datetime.timedelta(hours=1))

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}
    env.update(
        {
            MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE,
            "PLUGIN_PROTOCOL_VERSIONS": "5",
            "PLUGIN_CLIENT_CERT": host_cert.cert_pem.decode(),
            "BAO_PLUGIN_AUTOMTLS_ENABLED": "true",
            "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true",
            launcher.TIMING_ENV: "1",
        }
    )
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class StartupSample:
    """One start of a plugin executable under a fake host.

    Attributes:
        handshake_ms: from just before exec to the handshake line on stdout.
        verify_ms: the launcher's own report of its integrity check (``None`` when the
            executable is not a launcher).
        line: the handshake line.
        native_wait_ms: the launcher's report of how long the imports waited for the
            check's copies of native libraries (``None`` when not reported).
    """

    handshake_ms: float
    verify_ms: float | None
    line: str
    native_wait_ms: float | None = None


class StartupFailed(Exception):
    """The executable exited, or printed no handshake line in time."""


_VERIFY_LINE = re.compile(r"verified \d+ files \([\d.]+ MB\) in ([\d.]+) ms")
_NATIVE_WAIT = re.compile(r"the imports ([\d.]+) ms for its copies of native libraries")


def measure_startup(
    command: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> StartupSample:
    """Start ``command`` as a host would and time it until its handshake line; then stop it.

    Raises:
        StartupFailed: it exited first (its stderr is in the message) or timed out.
    """
    environment = dict(env) if env is not None else fake_host_environment()
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    line = b""
    try:
        deadline = started + timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise StartupFailed(f"no handshake line within {timeout:.0f} s")
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
        elapsed = (time.perf_counter() - started) * 1000
    finally:
        if line.startswith(b"1|"):  # a handshake: it serves until stopped
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    text = line.decode(errors="replace").strip()
    if not text.startswith("1|5|unix|"):
        said = f"stdout: {text}\n" if text else ""
        raise StartupFailed(
            f"{command[0]} exited with status {proc.returncode} before its handshake:\n"
            f"{said}{stderr}"
        )
    match = _VERIFY_LINE.search(stderr)
    waited = _NATIVE_WAIT.search(stderr)
    return StartupSample(
        handshake_ms=elapsed,
        verify_ms=float(match.group(1)) if match else None,
        line=text,
        native_wait_ms=float(waited.group(1)) if waited else None,
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def summarize(samples: Sequence[StartupSample]) -> dict[str, float | None]:
    """Median, min and max of the handshake times, the median verification time, and the
    median and max of the imports' wait for the check's copies of native libraries."""
    handshakes = [s.handshake_ms for s in samples]
    verifies = [s.verify_ms for s in samples if s.verify_ms is not None]
    waits = [s.native_wait_ms for s in samples if s.native_wait_ms is not None]
    return {
        "runs": float(len(samples)),
        "handshake_median_ms": _median(handshakes),
        "handshake_min_ms": min(handshakes),
        "handshake_max_ms": max(handshakes),
        "verify_median_ms": _median(verifies) if verifies else None,
        "native_wait_median_ms": _median(waits) if waits else None,
        "native_wait_max_ms": max(waits) if waits else None,
    }
