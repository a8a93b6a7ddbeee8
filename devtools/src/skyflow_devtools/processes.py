"""Processes the harness waits for, finds and kills: one poll loop, a /proc scan, reaping.

When a server is SIGKILLed its plugins are orphaned, so the harness finds plugin processes by
their command line (anything started from a server's ``plugin_directory``) and kills them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .client import OpenBaoError

if TYPE_CHECKING:
    from .openbao import OpenBaoServer

__all__ = [
    "alive",
    "cmdline",
    "plugin_pids",
    "poll_until",
    "processes_matching",
    "reap",
    "signal_pids",
]

_T = TypeVar("_T")

POLL_INTERVAL = 0.05
"""How often the harness looks at a process or a server while it waits for one."""
KILL_WAIT = 10.0
"""How long a SIGKILLed process may take to disappear."""
_REAP_ROUNDS = 3


def poll_until(
    predicate: Callable[[], _T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    message: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (OpenBaoError,),
) -> _T:
    """Call ``predicate`` until it returns something other than ``None`` or ``False``.

    Exceptions of a type in ``retry_on`` (by default :class:`OpenBaoError`) count as "not
    yet" (the last one is chained); any other exception ends the wait. ``predicate`` is
    called at least once, also with ``timeout=0``.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last_exc = exc
        else:
            if value is not None and value is not False:
                return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message}: not reached within {timeout:.1f} s") from last_exc
        time.sleep(interval)


def cmdline(pid: int) -> list[str]:
    """The arguments of ``pid`` (empty when it is gone, a zombie, or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def processes_matching(match: Callable[[str], bool]) -> list[int]:
    """PIDs whose executable or any argument satisfies ``match`` (one pass over /proc).

    Zombies have an empty command line and never match, which is what we want: they are
    already dead.
    """
    me = os.getpid()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        # A shebang launcher shows up as [python, /plugins/file]; a binary as its own path.
        if any(match(arg) for arg in cmdline(pid)) or match(_exe(pid)):
            found.append(pid)
    return sorted(found)


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (dead, waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain ")".
    state = stat.rsplit(")", 1)[-1].split()
    return bool(state) and state[0] not in ("Z", "X")


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids``, skipping those that are gone or not ours."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_quietly(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait up to ``timeout`` s for ``predicate``; carry on either way."""
    with contextlib.suppress(TimeoutError):
        poll_until(predicate, timeout=timeout, interval=POLL_INTERVAL)


def _none_alive(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(alive(pid) for pid in pids)


def reap(find: Callable[[], list[int]], *, grace: float) -> tuple[list[int], list[int]]:
    """Wait up to ``grace`` s for the processes ``find`` returns to exit, then SIGKILL them.

    Returns ``(killed, left)``: the PIDs that had to be killed, and those still alive after
    the kills. A process that is exiting loses its command line before it dies, so killed
    processes are followed by PID, and ``find`` is asked again in case one was between fork
    and exec.
    """
    pids = find()

    def all_gone() -> bool:
        nonlocal pids
        pids = find()
        return not pids

    if pids:
        _wait_quietly(all_gone, grace)
    killed: list[int] = []
    for _ in range(_REAP_ROUNDS):
        if not pids:
            break
        signal_pids(pids, signal.SIGKILL)
        killed.extend(pids)
        _wait_quietly(_none_alive(pids), KILL_WAIT)
        pids = find()
    left = [pid for pid in killed if alive(pid)] + pids
    return sorted(set(killed)), left


def plugin_pids(server: OpenBaoServer, name_or_path: str | Path | None = None) -> list[int]:
    """PIDs of a server's plugin processes, so tests can e.g. SIGKILL a plugin.

    Args:
        server: the server whose ``plugin_directory`` is searched.
        name_or_path: a catalog name installed through
            :func:`~skyflow_devtools.catalog.install_plugin`, else a file name in the plugin
            directory, or a path; ``None`` for every plugin process.
    """
    if name_or_path is None:
        return server.plugin_processes()
    if isinstance(name_or_path, Path):
        target = name_or_path if name_or_path.is_absolute() else server.plugin_dir / name_or_path
    else:
        info = server.plugins.get(name_or_path)
        target = info.path if info is not None else server.plugin_dir / name_or_path
    wanted = str(target)
    return processes_matching(lambda arg: arg == wanted)
