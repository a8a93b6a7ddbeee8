"""Run a backend as a plugin process: the entry point plugin executables call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping

from ..framework.backend import BackendFactory
from .broker import Broker
from .handshake import NotAPluginHost, handshake_line, negotiate
from .hclog import configure_logging
from .services import (
    BackendService,
    ControllerService,
    HealthService,
    MultiplexingService,
    StdioService,
    VersionService,
)
from .transport import GrpcServer, Servable

log = logging.getLogger("sdk.plugin")

PARENT_POLL_SECONDS = 1.0


def serve(
    factory: BackendFactory,
    *,
    version: str,
    multiplex: bool = True,
    env: Mapping[str, str] | None = None,
) -> int:
    """Serve ``factory``'s backends to the host that started this process.

    Returns the process exit status: 0 after a clean shutdown, 1 when not started by a
    host (a person ran the executable by hand), in which case a short explanation is
    printed on stderr. ``version`` must be a semantic version such as ``v1.2.3``.
    """
    environment = os.environ if env is None else env
    try:
        config = negotiate(environment)
    except NotAPluginHost as exc:
        print(str(exc), file=sys.stderr)
        return 1
    # Ctrl-C on the host's terminal reaches the whole process group: the host decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(environment.get("PLUGIN_LOG_LEVEL", "info"))
    runner = _run(
        factory,
        version=version,
        multiplex=multiplex,
        client_cert=config.client_cert_pem,
        app_protocol=config.app_protocol,
    )
    loop_factory = _loop_factory(environment)
    with asyncio.Runner(loop_factory=loop_factory) as asyncio_runner:
        return asyncio_runner.run(runner)


def _loop_factory(env: Mapping[str, str]) -> type[asyncio.AbstractEventLoop] | None:
    if env.get("PLUGIN_EVENT_LOOP", "uvloop") != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


async def _run(
    factory: BackendFactory,
    *,
    version: str,
    multiplex: bool,
    client_cert: str | None,
    app_protocol: int,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tls = None
    if client_cert:
        from .tls import build_tls

        tls = build_tls(client_cert)
    broker = Broker(tls.client if tls else None)
    backends = BackendService(factory, broker)
    services: list[Servable] = [
        backends,
        broker,
        MultiplexingService(multiplex),
        VersionService(version),
        ControllerService(stop.set),
        StdioService(),
        HealthService(),
    ]
    server = GrpcServer(services)
    socket_dir = tempfile.mkdtemp(prefix="plugin")
    socket_path = os.path.join(socket_dir, "plugin.sock")
    try:
        await server.start(path=socket_path, ssl=tls.server if tls else None)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        line = handshake_line(
            app_protocol=app_protocol,
            socket_path=socket_path,
            server_cert_der=tls.cert_der if tls else None,
        )
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        watchdog = asyncio.create_task(_watch_parent(os.getppid(), stop))
        await stop.wait()
        watchdog.cancel()
        log.debug("plugin shutting down")
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(backends.close_all(), 1.5)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
    return 0


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop when the host dies: a SIGKILLed host leaves its plugins orphaned otherwise."""
    while True:
        await asyncio.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent_pid:
            log.warning("host process is gone; exiting")
            stop.set()
            return
