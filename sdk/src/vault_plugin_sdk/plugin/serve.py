"""Run a backend as a plugin process: the entry point plugin executables call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping

from ..framework.backend import BackendFactory
from .broker import Broker
from .handshake import NotAPluginHost, handshake_line, negotiate
from .hardening import disable_core_dumps
from .hclog import configure_logging
from .servable import Servable
from .services import (
    BackendService,
    ControllerService,
    HealthService,
    MultiplexingService,
    StdioService,
    VersionService,
)
from .transport import GrpcServer

log = logging.getLogger("sdk.plugin")

PARENT_POLL_SECONDS = 1.0


def serve(
    factory: BackendFactory,
    *,
    version: str,
    multiplex: bool = True,
    env: Mapping[str, str] | None = None,
    log_to_host: bool = False,
    quiet_loggers: Iterable[str] = (),
    no_core_dumps: bool = False,
) -> int:
    """Serve ``factory``'s backends to the host that started this process.

    Returns the process exit status: 0 after a clean shutdown, 1 when not started by a
    host (a person ran the executable by hand), in which case a short explanation is
    printed on stderr. ``version`` must be a semantic version such as ``v1.2.3``.

    Process-wide state is left alone unless asked for:

    * ``log_to_host``: send the root logger to stderr as hclog JSON at the level in
      ``PLUGIN_LOG_LEVEL`` (default info), so the host files each record under its level;
      ``hpack``/``h2`` and the ``quiet_loggers`` are raised to WARNING, and records stop
      collecting what the line never shows (caller frame, thread and process names).
    * ``no_core_dumps``: set ``RLIMIT_CORE`` to 0 and the process non-dumpable, so that a
      crash or a ``gcore`` cannot write the backend's secrets to disk.
    """
    environment = os.environ if env is None else env
    try:
        config = negotiate(environment)
    except NotAPluginHost as exc:
        print(str(exc), file=sys.stderr)
        return 1
    # Ctrl-C on the host's terminal reaches the whole process group: the host decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_to_host:
        configure_logging(environment.get("PLUGIN_LOG_LEVEL", "info"), quiet=quiet_loggers)
    if no_core_dumps:
        for problem in disable_core_dumps():
            log.warning("could not disable core dumps", extra={"detail": problem})
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
    try:
        socket_dir = _socket_directory()
    except OSError as exc:
        log.error("the plugin cannot start: %s", exc)  # an hclog line the host shows
        return 1
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
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
        with contextlib.suppress(OSError):
            os.rmdir(socket_dir)
    return 0


def _socket_directory() -> str:
    """A new directory only this user can enter, for the plugin's socket: in ``$TMPDIR``,
    else ``/tmp``, where a Go plugin makes its own (``os.MkdirTemp("", "plugin")``).

    Made here rather than with ``tempfile``, which imports ``shutil`` and with it three
    compression libraries: about 3 ms of every start, for one directory.
    """
    base = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 -- a fresh 0700 dir, as mkdtemp
    while True:
        path = os.path.join(base, "plugin" + os.urandom(8).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot make the plugin's socket directory in {base} ($TMPDIR, else /tmp): "
                f"{exc.strerror}; give the server's environment a writable TMPDIR",
            ) from None
        return path


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop when the host dies: a SIGKILLed host leaves its plugins orphaned otherwise."""
    while True:
        await asyncio.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent_pid:
            log.warning("host process is gone; exiting")
            stop.set()
            return
