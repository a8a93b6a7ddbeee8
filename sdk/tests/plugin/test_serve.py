"""The plugin process as a host sees it: we play the host, with a P-521 certificate as
OpenBao uses, start the example plugin and talk to it over the unix socket with mTLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.exceptions import StreamTerminatedError
from grpclib.health.v1 import health_grpc, health_pb2

from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE
from vault_plugin_sdk.plugin.pb import (
    backend_grpc,
    backend_pb2,
    goplugin_grpc,
    goplugin_pb2,
    multiplexing_grpc,
    multiplexing_pb2,
    version_grpc,
    version_pb2,
)
from vault_plugin_sdk.plugin.tls import self_signed_certificate

KV_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kv.py"
PLUGIN = [sys.executable, str(KV_EXAMPLE)]


@dataclass
class HostTLS:
    cert_pem: str
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def host_tls(tmp_path_factory: pytest.TempPathFactory) -> HostTLS:
    """A host certificate like go-plugin's: ECDSA P-521, self-signed, for localhost."""
    host = self_signed_certificate(curve="P-521", valid_for=datetime.timedelta(hours=1))
    folder = tmp_path_factory.mktemp("host-tls")
    cert_pem = host.cert_pem.decode()
    (folder / "cert.pem").write_text(cert_pem)
    (folder / "key.pem").write_bytes(host.key_pem)
    return HostTLS(cert_pem, folder / "cert.pem", folder / "key.pem")


@dataclass
class RunningPlugin:
    process: asyncio.subprocess.Process
    socket_path: str
    channel: Channel


def host_env(host_tls: HostTLS) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE,
            "PLUGIN_PROTOCOL_VERSIONS": "5",
            "PLUGIN_CLIENT_CERT": host_tls.cert_pem,
            "BAO_PLUGIN_AUTOMTLS_ENABLED": "true",
        }
    )
    return env


@pytest.fixture
async def plugin(host_tls: HostTLS) -> AsyncIterator[RunningPlugin]:
    process = await asyncio.create_subprocess_exec(
        *PLUGIN,
        env=host_env(host_tls),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
    core, app, network, address, protocol, cert_b64 = line.split("|")
    assert (core, app, network, protocol) == ("1", "5", "unix", "grpc")
    plugin_cert = base64.b64decode(cert_b64 + "=" * (-len(cert_b64) % 4))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(
        cadata=ssl.DER_cert_to_PEM_cert(plugin_cert)  # the plugin's cert is the only root
    )
    context.load_cert_chain(host_tls.cert_file, host_tls.key_file)
    context.set_alpn_protocols(["h2"])
    channel = Channel(
        path=address, ssl=context, config=Configuration(ssl_target_name_override="localhost")
    )
    try:
        yield RunningPlugin(process, address, channel)
    finally:
        channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serves_the_small_services_over_mtls(plugin: RunningPlugin) -> None:
    version = await version_grpc.PluginVersionStub(plugin.channel).Version(version_pb2.Empty())
    assert version.plugin_version == "v0.1.0"
    mux = await multiplexing_grpc.PluginMultiplexingStub(plugin.channel).MultiplexingSupport(
        multiplexing_pb2.MultiplexingSupportRequest()
    )
    assert mux.supported
    health = await health_grpc.HealthStub(plugin.channel).Check(
        health_pb2.HealthCheckRequest(service="plugin")
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    backend = backend_grpc.BackendStub(plugin.channel)
    reply = await backend.HandleRequest(
        backend_pb2.HandleRequestArgs(
            request=backend_pb2.Request(operation="resolve-path", path="kv/x")
        ),
        metadata={"multiplex_id": "abc"},
    )
    assert reply.err.err_type == 5  # unsupported operation: the host goes ahead unchanged
    not_set_up = await backend.HandleRequest(
        backend_pb2.HandleRequestArgs(request=backend_pb2.Request(operation="read", path="info")),
        metadata={"multiplex_id": "abc"},
    )
    assert not_set_up.err.err_msg == "backend is not set up"


@pytest.mark.skipif(not os.path.exists("/proc/self/limits"), reason="needs Linux /proc")
async def test_the_running_plugin_cannot_dump_core(plugin: RunningPlugin) -> None:
    """A core file would hold keys and tokens: the served process has a core limit of 0."""
    limits = Path(f"/proc/{plugin.process.pid}/limits").read_text().splitlines()
    core = next(line for line in limits if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core


async def test_shutdown_exits_cleanly_and_removes_the_socket(plugin: RunningPlugin) -> None:
    await goplugin_grpc.GRPCControllerStub(plugin.channel).Shutdown(goplugin_pb2.Empty())
    assert await asyncio.wait_for(plugin.process.wait(), 10) == 0
    assert not os.path.exists(plugin.socket_path)


async def test_sigterm_exits_cleanly_and_sigint_is_ignored(plugin: RunningPlugin) -> None:
    plugin.process.send_signal(signal.SIGINT)
    await asyncio.sleep(0.3)
    assert plugin.process.returncode is None
    plugin.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(plugin.process.wait(), 10) == 0
    assert not os.path.exists(plugin.socket_path)


async def test_a_client_without_the_host_certificate_is_refused(plugin: RunningPlugin) -> None:
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.check_hostname = False
    stranger.verify_mode = ssl.CERT_NONE
    stranger.set_alpn_protocols(["h2"])
    channel = Channel(
        path=plugin.socket_path,
        ssl=stranger,
        config=Configuration(ssl_target_name_override="localhost"),
    )
    try:
        with pytest.raises((ConnectionError, ssl.SSLError, OSError, StreamTerminatedError)):
            await asyncio.wait_for(
                version_grpc.PluginVersionStub(channel).Version(version_pb2.Empty()), 10
            )
    finally:
        channel.close()


def test_run_by_hand_prints_a_clear_message_and_exits_1() -> None:
    env = {k: v for k, v in os.environ.items() if k != MAGIC_COOKIE_KEY}
    result = subprocess.run(PLUGIN, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "not meant to be executed directly" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_exits_when_the_host_dies(host_tls: HostTLS, tmp_path: Path) -> None:
    """A host killed with SIGKILL must not leave the plugin running as an orphan."""
    pid_file = tmp_path / "pid"
    # An intermediate shell plays the host: it starts the plugin, then is killed.
    script = f"{' '.join(PLUGIN)} > {tmp_path / 'out'} 2>/dev/null & echo $! > {pid_file}; sleep 60"
    host = subprocess.Popen(["/bin/sh", "-c", script], env=host_env(host_tls))
    try:
        for _ in range(400):
            out = tmp_path / "out"
            if pid_file.exists() and out.exists() and out.read_text().count("|") >= 5:
                break
            time.sleep(0.05)
        plugin_pid = int(pid_file.read_text())
        host.kill()
        host.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{plugin_pid}").exists():
            status = Path(f"/proc/{plugin_pid}/status").read_text()
            if "State:\tZ" in status:
                break
            time.sleep(0.1)
        alive = (
            Path(f"/proc/{plugin_pid}").exists()
            and "State:\tZ" not in Path(f"/proc/{plugin_pid}/status").read_text()
        )
        assert not alive
    finally:
        host.kill()


def test_an_unusable_tmpdir_stops_the_plugin_with_its_fix_named(
    host_tls: HostTLS, tmp_path: Path
) -> None:
    """No handshake, exit status 1, and a line that says what to change."""
    env = dict(host_env(host_tls), TMPDIR=str(tmp_path / "gone"))
    done = subprocess.run(PLUGIN, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (1, "")
    assert "socket directory in" in done.stderr
    assert "writable TMPDIR" in done.stderr
    assert "Traceback" not in done.stderr
