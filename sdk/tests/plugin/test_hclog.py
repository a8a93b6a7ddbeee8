"""hclog JSON lines on stderr: a failure's frames are logged, never its message or local
values; lines on the event loop are batched (info for a short window, warnings within the
loop turn)."""

from __future__ import annotations

import asyncio
import enum
import io
import json
import logging
import sys
from typing import Any

import pytest

from vault_plugin_sdk.plugin.hclog import (
    HclogFormatter,
    LineTemplate,
    LoopBatchedHandler,
    configure_logging,
    log_fields,
    log_template,
)

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


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(stream: CountingStream, **options: Any) -> logging.Logger:
    handler = LoopBatchedHandler(stream, **options)
    handler.setFormatter(HclogFormatter())
    logger = logging.getLogger(f"test-hclog-{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


async def test_info_lines_wait_for_the_window_and_leave_in_one_write() -> None:
    stream = CountingStream()
    logger = _logger(stream, window=0.05)
    for index in range(3):
        logger.info("token request", extra={"n": index})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.writes == 0  # still inside the window
    await asyncio.sleep(0.1)
    assert stream.writes == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2]
    assert lines[0]["@message"] == "token request"
    assert lines[0]["@level"] == "info"
    logger.debug("later")
    await asyncio.sleep(0.1)
    assert stream.writes == 2  # a new window after a write


async def test_a_warning_leaves_in_the_same_loop_turn_after_the_lines_before_it() -> None:
    stream = CountingStream()
    logger = _logger(stream, window=60.0)
    logger.info("first")
    logger.warning("second")
    logger.info("third")
    await asyncio.sleep(0)
    assert stream.writes == 1
    messages = [json.loads(line)["@message"] for line in stream.getvalue().splitlines()]
    assert messages == ["first", "second", "third"]


async def test_pending_lines_are_written_once_they_reach_max_bytes() -> None:
    stream = CountingStream()
    logger = _logger(stream, window=60.0, max_bytes=1000)
    for _ in range(4):
        logger.info("x" * 100)
    await asyncio.sleep(0)
    assert stream.writes == 0  # about 560 bytes pending, under the cap
    for _ in range(4):
        logger.info("x" * 100)
    await asyncio.sleep(0)
    assert stream.writes == 1
    assert len(stream.getvalue().splitlines()) == 8


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


def test_configured_logging_looks_up_no_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line per request must not pay for a stack walk the hclog line never shows."""
    for switch in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, switch, getattr(logging, switch))  # restored after
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)

    def walked(*args: object, **kwargs: object) -> tuple[str, int, str, None]:
        raise AssertionError("the caller's frame was looked up")

    monkeypatch.setattr(logging.Logger, "findCaller", walked)
    configure_logging("info")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("sdk.plugin").info("token request", extra={"role": "producer", "n": 2})
    root.handlers[0].flush()
    entry = json.loads(stream.getvalue())
    assert (entry["@message"], entry["role"], entry["n"]) == ("token request", "producer", 2)
    assert not {"threadName", "processName", "funcName"} & entry.keys()


def test_extra_fields_come_sorted_and_private_ones_stay_out() -> None:
    record = logging.LogRecord("m", logging.INFO, __file__, 1, "msg", (), None)
    record.__dict__.update({"zeta": 1, "alpha": "a", "_private": "x", "obj": object()})
    entry = json.loads(HclogFormatter().format(record))
    extra = [key for key in entry if not key.startswith("@")]
    assert extra == ["alpha", "obj", "zeta"]
    assert entry["obj"].startswith("<object object")


def _without_timestamp(text: str) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in text.splitlines()]
    for entry in entries:
        entry.pop("@timestamp")
        entry.pop("@module")  # each test logger has its own name
    return entries


FIELDS = {"role": "producer", "duration_ms": 0.029, "cache": "hit", "n": 3, "obj": ("a", 1)}


WAYS = ["log_fields", "log_template"]


def _log_fields(way: str, logger: logging.Logger, level: int = logging.INFO) -> None:
    """Log "msg" with FIELDS through ``way``; a template keeps two of them variable."""
    if way == "log_fields":
        log_fields(logger, level, "msg", FIELDS)
    else:
        log_template(logger, level, *_split(dict(FIELDS), ["duration_ms", "obj"]))


@pytest.mark.parametrize("way", WAYS)
def test_a_line_per_request_is_the_line_logging_writes_without_a_record(
    way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ordinary, fast = CountingStream(), CountingStream()
    _logger(ordinary).info("msg", extra=FIELDS)
    logger = _logger(fast)

    def no_record(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("a LogRecord was made")

    monkeypatch.setattr(logging.Logger, "makeRecord", no_record)
    _log_fields(way, logger)
    assert _without_timestamp(fast.getvalue()) == _without_timestamp(ordinary.getvalue())
    entry = json.loads(fast.getvalue())
    assert entry["@module"] == logger.name
    assert entry["obj"] == "('a', 1)"
    assert entry["@timestamp"].endswith("Z")


@pytest.mark.parametrize("way", WAYS)
def test_lines_per_request_respect_levels(way: str) -> None:
    stream = CountingStream()
    logger = _logger(stream)
    logger.setLevel(logging.WARNING)
    _log_fields(way, logger)
    logger.setLevel(logging.DEBUG)
    logger.handlers[0].setLevel(logging.ERROR)
    _log_fields(way, logger)
    assert stream.getvalue() == ""


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("setup", ["second handler", "logger filter", "handler filter"])
def test_lines_per_request_take_the_ordinary_path_under_any_other_set_up(
    way: str, setup: str
) -> None:
    stream = CountingStream()
    logger = _logger(stream)
    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    if setup == "second handler":
        logger.addHandler(Capture())
    elif setup == "logger filter":
        logger.addFilter(keep)
    else:
        logger.handlers[0].addFilter(keep)
    _log_fields(way, logger)
    logger.handlers[0].flush()
    assert [record.getMessage() for record in seen] == ["msg"]
    assert {key: seen[0].__dict__[key] for key in FIELDS} == FIELDS
    assert json.loads(stream.getvalue())["role"] == "producer"


def test_log_fields_refuses_to_overwrite_a_record_attribute_as_extra_does() -> None:
    logger = _logger(CountingStream())
    with pytest.raises(KeyError, match="levelname"):
        log_fields(logger, logging.INFO, "token request", {"levelname": "x"})


def test_lines_left_pending_by_a_stopped_loop_leave_with_the_next_loops_lines() -> None:
    stream = CountingStream()
    logger = _logger(stream, window=0.05)

    async def log(message: str, wait: float) -> None:
        logger.info(message)
        await asyncio.sleep(wait)

    asyncio.run(log("first", 0))  # the loop stops before its window ends
    assert stream.writes == 0
    asyncio.run(log("second", 0.1))
    assert [json.loads(line)["@message"] for line in stream.getvalue().splitlines()] == [
        "first",
        "second",
    ]


class Level(enum.IntEnum):
    HIGH = 3


class Label(enum.StrEnum):
    HIT = "hit"


TRICKY: dict[str, object] = {
    "quote": 'say "hi"\\ \n\t\x00\x1f',
    "unicode": "naïve ☃ 𝄞",
    "empty": "",
    "zero": 0,
    "negative": -7,
    "big": 2**70,
    "true": True,
    "false": False,
    "float": 0.1,
    "tiny": 5e-324,
    "huge": 1e300,
    "minus_zero": -0.0,
    "nan": float("nan"),
    "inf": float("inf"),
    "minus_inf": float("-inf"),
    "int_enum": Level.HIGH,
    "str_enum": Label.HIT,
    "none": None,
    "tuple": ("a", 1),
    'ключ "x"': "non-ASCII key",
}


@pytest.mark.parametrize("key", sorted(TRICKY))
def test_each_field_is_written_as_the_json_encoder_writes_it(key: str) -> None:
    # The writer builds the line field by field; the oracle is json.dumps of the object the
    # line stands for (plain values as they are, anything else as its str()).
    value = TRICKY[key]
    line = HclogFormatter().format_fields(logging.INFO, "m", "msg", 0.0, {key: value})
    plain = value if isinstance(value, (str, int, float, bool)) else str(value)
    expected = {
        "@level": "info",
        "@message": "msg",
        "@module": "m",
        "@timestamp": "1970-01-01T00:00:00.000000Z",
        key: plain,
    }
    assert line == json.dumps(expected, separators=(",", ":"))


def test_a_whole_line_is_the_json_encoders_bytes() -> None:
    formatter = HclogFormatter()
    for _ in range(2):  # the second time from the remembered head and keys
        line = formatter.format_fields(logging.WARNING, 'mod "q"', "m\u00e9ssage", 1.5, TRICKY)
        entry: dict[str, object] = {
            "@level": "warn",
            "@message": "m\u00e9ssage",
            "@module": 'mod "q"',
            "@timestamp": "1970-01-01T00:00:01.500000Z",
        }
        for key in sorted(TRICKY):
            value = TRICKY[key]
            entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        assert line == json.dumps(entry, separators=(",", ":"))


def test_an_exceptions_fields_come_last_and_win_over_extra_fields_of_their_name() -> None:
    record = _record()
    record.__dict__.update({"error_type": "mine", "alpha": 1})
    line = HclogFormatter().format(record)
    entry = json.loads(line)
    assert list(entry)[-2:] == ["error_type", "stack"]
    assert entry["error_type"] == "RuntimeError"
    assert line.count('"error_type"') == 1


def test_lines_with_the_same_names_in_other_orders_or_other_names_come_sorted() -> None:
    formatter = HclogFormatter()
    shapes: list[dict[str, object]] = [
        {"b": 1, "a": "x", "_hidden": 1},
        {"a": "y", "b": 2},  # the same names, another order
        {"b": 3, "a": "z", "_hidden": 2},  # remembered
        {"c": True, "a": "w"},
        {"b": 4, "a": "v", "c": 0.5},
    ]
    lines = [formatter.format_fields(logging.INFO, "m", "msg", 0.0, shape) for shape in shapes]
    expected = [
        {key: shape[key] for key in sorted(shape) if not key.startswith("_")} for shape in shapes
    ]
    assert [
        {k: v for k, v in json.loads(line).items() if not k.startswith("@")} for line in lines
    ] == expected
    assert [list(json.loads(line))[4:] for line in lines] == [list(e) for e in expected]


def _split(fields: dict[str, object], variable: list[str]) -> tuple[LineTemplate, list[object]]:
    constant = {key: value for key, value in fields.items() if key not in variable}
    return LineTemplate("msg", constant, variable), [fields[key] for key in variable]


@pytest.mark.parametrize("variable", [[], sorted(TRICKY), *([key] for key in sorted(TRICKY))])
def test_a_template_writes_the_line_of_its_fields(variable: list[str]) -> None:
    # Whichever fields are constant, the line is the one format_fields writes for all of
    # them (itself checked against json.dumps above), values in the order given.
    fields = {**TRICKY, "_private": "left out"}
    template, values = _split(fields, list(reversed(variable)))
    formatter = HclogFormatter()
    for _ in range(2):  # the second time from the remembered head
        line = formatter.format_template(logging.INFO, "m", 1.5, template, values)
        assert line == formatter.format_fields(logging.INFO, "m", "msg", 1.5, fields)
    assert "_private" not in json.loads(line)
    assert template.fields(values) == fields


def test_a_template_refuses_what_extra_refuses_and_values_that_do_not_match() -> None:
    with pytest.raises(KeyError, match="levelname"):
        LineTemplate("msg", {}, ["levelname"])
    with pytest.raises(ValueError, match="named twice"):
        LineTemplate("msg", {"role": "a"}, ["role"])
    template = LineTemplate("msg", {"role": "a"}, ["n"])
    with pytest.raises(ValueError, match="2 values"):
        log_template(_logger(CountingStream()), logging.INFO, template, [1, 2])
