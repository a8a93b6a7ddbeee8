"""hclog lines: a failure's frames are logged, never its message or local values."""

from __future__ import annotations

import json
import logging
import sys

from vault_plugin_sdk.plugin.hclog import HclogFormatter

SECRET = "sk-" + "7" * 24  # built at run time; stands for a key or token


def _fail_inside(secret: str) -> None:
    held = {"private_key": secret}  # a local value that must not be logged
    raise ValueError(f"could not parse {held['private_key']}")


def _record() -> logging.LogRecord:
    try:
        try:
            _fail_inside(SECRET)
        except ValueError as exc:
            raise RuntimeError(f"wrapped: {exc}") from exc
    except RuntimeError:
        info = sys.exc_info()
    return logging.LogRecord("sdk.plugin", logging.ERROR, __file__, 1, "request failed", (), info)


def test_a_failure_logs_its_frames_but_no_message_or_local() -> None:
    line = HclogFormatter().format(_record())
    entry = json.loads(line)
    assert SECRET not in line
    assert "could not parse" not in line
    assert entry["error_type"] == "RuntimeError"
    stack = entry["stack"]
    assert "plugin/test_hclog.py:" in stack
    assert " _fail_inside" in stack  # the innermost function, through the cause chain
    assert "ValueError at " in stack
    assert " _record" in stack


def test_a_line_without_an_exception_has_no_stack() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "fine", (), None)
    assert "stack" not in json.loads(HclogFormatter().format(record))
