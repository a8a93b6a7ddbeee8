"""serve() leaves process-wide state alone unless its caller asks for each change."""

from __future__ import annotations

import importlib
import logging
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vault_plugin_sdk.framework import Backend, BackendConfig
from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

# the module (the package exports the function under the same name)
serve_module = importlib.import_module("vault_plugin_sdk.plugin.serve")
HOST_ENV = {MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE, "PLUGIN_EVENT_LOOP": "asyncio"}
# What records collect, process-wide (the logging HOWTO's "Optimization" switches).
LOGGING_SWITCHES = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


async def _factory(config: BackendConfig) -> Backend:
    raise AssertionError("not called: the server is not started in these tests")


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """serve() up to the point where it would start the gRPC server, and the global state
    it may touch put back afterwards."""

    async def run(*args: Any, **kwargs: Any) -> int:
        return 0

    monkeypatch.setattr(serve_module, "_run", run)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {name: logging.getLogger(name).level for name in ("httpx", "h2", "hpack")}
    sigint = signal.getsignal(signal.SIGINT)
    switches = {name: getattr(logging, name) for name in LOGGING_SWITCHES}
    yield
    for name, value in switches.items():
        setattr(logging, name, value)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in loggers.items():
        logging.getLogger(name).setLevel(saved)
    signal.signal(signal.SIGINT, sigint)


@pytest.mark.usefixtures("no_server")
def test_serve_changes_no_logger_by_default() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    httpx_level = logging.getLogger("httpx").level
    switches = [getattr(logging, name) for name in LOGGING_SWITCHES]

    assert serve_module.serve(_factory, version="v0.1.0", env=HOST_ENV) == 0

    assert [getattr(logging, name) for name in LOGGING_SWITCHES] == switches
    assert root.handlers == handlers
    assert root.level == level
    assert logging.getLogger("httpx").level == httpx_level


@pytest.mark.usefixtures("no_server")
def test_serve_changes_what_it_is_asked_to() -> None:
    env = {**HOST_ENV, "PLUGIN_LOG_LEVEL": "debug"}
    status = serve_module.serve(
        _factory,
        version="v0.1.0",
        env=env,
        log_to_host=True,
        quiet_loggers=("httpx",),
    )
    assert status == 0
    root = logging.getLogger()
    assert [type(h.formatter).__name__ for h in root.handlers] == ["HclogFormatter"]
    assert root.level == logging.DEBUG
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("h2").level == logging.WARNING
    # records no longer collect what the hclog line never shows
    assert [getattr(logging, name) for name in LOGGING_SWITCHES] == [None, False, False, False]


def test_the_socket_directory_is_private_and_made_in_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a Go plugin makes its own: $TMPDIR, else /tmp; only this user may enter it."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    first = Path(serve_module._socket_directory())
    second = Path(serve_module._socket_directory())
    assert first.parent == second.parent == tmp_path
    assert first != second
    assert stat.S_IMODE(first.stat().st_mode) == 0o700


def test_an_unusable_tmpdir_is_named_with_its_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "gone"
    monkeypatch.setenv("TMPDIR", str(missing))
    with pytest.raises(OSError, match=r"socket directory in .*gone.*writable TMPDIR"):
        serve_module._socket_directory()
