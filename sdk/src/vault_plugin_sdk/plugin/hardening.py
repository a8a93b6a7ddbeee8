"""Process hardening at start: no core dumps.

A core dump of the plugin would hold whatever is in memory -- service-account keys, bearer
tokens, the mTLS key -- in a file on the host's disk. The plugin sets its core size limit to
0 and, on Linux, marks itself non-dumpable (which also keeps other processes of the same
user from reading its memory through ``/proc`` or ptrace).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("sdk.plugin")

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def disable_core_dumps() -> list[str]:
    """Forbid core dumps of this process; returns what could not be done (for the log)."""
    missing: list[str] = []
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError) as exc:
        missing.append(f"RLIMIT_CORE: {type(exc).__name__}")
    libc = _libc()
    if libc is None:
        missing.append("prctl: no libc")
    elif libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        missing.append(f"prctl(PR_SET_DUMPABLE): errno {ctypes.get_errno()}")
    return missing


def is_dumpable() -> bool | None:
    """Whether the kernel would dump this process (``None``: cannot tell here)."""
    libc = _libc()
    if libc is None:
        return None
    return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def _libc() -> ctypes.CDLL | None:
    # The running program's own symbols (libc among them): no library search, which would
    # start a subprocess (ldconfig) on every plugin start.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "prctl") else None
