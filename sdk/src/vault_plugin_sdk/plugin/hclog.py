"""Logs on stderr in hclog's JSON format, which the host re-logs under the plugin's name."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class HclogFormatter(logging.Formatter):
    """One JSON object per line with ``@level``, ``@message``, ``@module``, ``@timestamp``
    and the record's extra attributes as key/value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "@level": _LEVELS.get(record.levelno, "info"),
            "@message": record.getMessage(),
            "@module": record.name,
            "@timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info and record.exc_info[1] is not None:
            # Where it failed, never what it held: exception messages and local values may
            # quote a key or a token, and the host's log is widely read.
            entry["error_type"] = type(record.exc_info[1]).__name__
            entry["stack"] = stack_frames(record.exc_info[1])
        return json.dumps(entry, separators=(",", ":"))


MAX_FRAMES = 40


def stack_frames(exc: BaseException) -> str:
    """The traceback as ``file:line function`` frames, innermost last, with the types of
    the exceptions it was raised from (``__cause__``/``__context__``), and nothing else."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < MAX_FRAMES:
        seen.add(id(current))
        frames = [
            f"{_short(frame.filename)}:{frame.lineno} {frame.name}"
            for frame in traceback.extract_tb(current.__traceback__)
        ]
        label = type(current).__name__
        parts.append(f"{label} at " + (" > ".join(frames[-MAX_FRAMES:]) or "?"))
        current = current.__cause__ or current.__context__
    return " | raised while handling ".join(parts)


def _short(filename: str) -> str:
    """The last two components of a path: enough to find the file, no host layout."""
    head, tail = os.path.split(filename)
    return os.path.join(os.path.basename(head), tail) if head else tail


def configure_logging(level: str | None, quiet: Iterable[str] = ()) -> None:
    """Send the root logger to stderr in hclog JSON at ``level`` (default info).

    grpclib's HTTP/2 loggers and the ``quiet`` ones are raised to WARNING.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HclogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    names = {
        "trace": logging.DEBUG,
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warn": logging.WARNING,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }
    root.setLevel(names.get((level or "info").lower(), logging.INFO))
    # Per-request client logs would flood the host's log at INFO.
    for chatty in ("hpack", "h2", *quiet):
        logging.getLogger(chatty).setLevel(logging.WARNING)
