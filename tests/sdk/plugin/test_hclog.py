"""hclog JSON lines on stderr, batched per event-loop turn."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from skyflow_vault_plugin.sdk.plugin.hclog import HclogFormatter, LoopBatchedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(stream: CountingStream) -> logging.Logger:
    handler = LoopBatchedHandler(stream)
    handler.setFormatter(HclogFormatter())
    logger = logging.getLogger(f"test-hclog-{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


async def test_lines_logged_in_one_loop_turn_leave_in_one_write() -> None:
    stream = CountingStream()
    logger = _logger(stream)
    for index in range(3):
        logger.info("token request", extra={"n": index})
    assert stream.writes == 0  # nothing written before the loop turns
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.writes == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2]
    assert lines[0]["@message"] == "token request"
    assert lines[0]["@level"] == "info"


def test_without_a_running_loop_lines_are_written_at_once() -> None:
    stream = CountingStream()
    logger = _logger(stream)
    logger.warning("starting", extra={"phase": "boot"})
    assert stream.writes == 1
    entry = json.loads(stream.getvalue())
    assert entry["phase"] == "boot"
    assert entry["@level"] == "warn"


async def test_flush_writes_pending_lines_at_exit() -> None:
    stream = CountingStream()
    logger = _logger(stream)
    logger.error("last words")
    logger.handlers[0].flush()  # what logging.shutdown() does at interpreter exit
    assert json.loads(stream.getvalue())["@message"] == "last words"


def test_timestamps_are_rfc3339_utc_with_microseconds() -> None:
    formatter = HclogFormatter()
    record = logging.LogRecord("m", logging.INFO, "", 0, "x", None, None)
    record.created = 1_700_000_000.25
    stamp = json.loads(formatter.format(record))["@timestamp"]
    assert stamp == "2023-11-14T22:13:20.250000Z"
    record.created = 1_700_000_001.000_007
    assert json.loads(formatter.format(record))["@timestamp"] == "2023-11-14T22:13:21.000007Z"
