"""Logs on stderr in hclog's JSON format, which the host re-logs under the plugin's name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# Values a line carries as they are; anything else as its str(). A tuple, built once: a
# union written in the isinstance call would be built again for every field of every line.
_PLAIN = (str, int, float, bool)
# For what the line writer does not write itself (subclasses of the plain types, floats that
# are not finite): json.dumps with separators builds a new encoder per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_quote = json.encoder.encode_basestring_ascii  # C: a JSON string literal, as json.dumps writes it
_MEMO_LIMIT = 1024


class HclogFormatter(logging.Formatter):
    """One JSON object per line with ``@level``, ``@message``, ``@module``, ``@timestamp``
    and the record's extra attributes as key/value pairs.

    The line is the one ``json.dumps`` (ASCII, no spaces) writes for that object, but it is
    written field by field: the object is never built; the head (level, message, module)
    and, for each set of field names, their sorted and encoded ``"key":`` are made once and
    remembered; and a value of a plain type costs one C call. A line per request (an audit
    line) took more than twice as long through the encoder (issue 12).
    """

    _second = -1
    _second_text = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heads: dict[tuple[int, str, str], str] = {}
        self._layouts: dict[tuple[str | None, ...], list[tuple[str, str]]] = {}

    def _timestamp(self, created: float) -> str:
        # RFC 3339 in UTC with microseconds; the date and time part is formatted once a second.
        second, micros = divmod(round(created * 1_000_000), 1_000_000)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{micros:06d}Z"

    def format(self, record: logging.LogRecord) -> str:
        # The extra attributes by set difference (in C) rather than a test per attribute of
        # the record: this runs for every line.
        attributes = record.__dict__
        fields = {key: attributes[key] for key in attributes.keys() - _STANDARD_ATTRS}
        last: dict[str, object] = {}
        if record.exc_info and record.exc_info[1] is not None:
            # Where it failed, never what it held: exception messages and local values may
            # quote a key or a token, and the host's log is widely read.
            last["error_type"] = type(record.exc_info[1]).__name__
            last["stack"] = stack_frames(record.exc_info[1])
        message = record.getMessage()
        return self._line(
            record.levelno, record.name, message, record.created, fields, last or None
        )

    def format_fields(
        self, levelno: int, name: str, message: str, created: float, fields: Mapping[str, object]
    ) -> str:
        """The line :meth:`format` writes for a record of these attributes and ``extra``
        fields, without a record (:func:`log_fields`)."""
        return self._line(levelno, name, message, created, fields, None)

    def format_template(
        self,
        levelno: int,
        name: str,
        created: float,
        template: LineTemplate,
        values: Sequence[object],
    ) -> str:
        """The line :meth:`format` writes for a record of ``template``'s message and fields,
        with ``values`` for its variable ones, without a record (:func:`log_template`)."""
        parts = [self._head(levelno, name, template.message), self._timestamp(created)]
        literals = template.literals
        for index, position in enumerate(template.holes):
            parts.append(literals[index])
            parts.append(_value_text(values[position]))
        parts.append(literals[-1])
        return "".join(parts)

    def _head(self, levelno: int, name: str, message: str) -> str:
        """Level, message and module, up to the timestamp's opening quote."""
        head = self._heads.get((levelno, name, message))
        if head is None:
            level = _LEVELS.get(levelno, "info")
            head = (
                f'{{"@level":"{level}","@message":{_quote(message)},"@module":{_quote(name)}'
                ',"@timestamp":"'
            )
            if len(self._heads) >= _MEMO_LIMIT:  # messages with their values in: unbounded
                self._heads.clear()
            self._heads[(levelno, name, message)] = head
        return head

    def _line(
        self,
        levelno: int,
        name: str,
        message: str,
        created: float,
        fields: Mapping[str, object],
        last: Mapping[str, object] | None,
    ) -> str:
        parts = [self._head(levelno, name, message), self._timestamp(created), '"']
        # The line's keys, sorted (so that its fields come in one order; the host re-orders
        # them anyway) and encoded, remembered by the fields' own order: a line per request
        # has the same keys as the last one. The exception's fields come last and win over
        # extra fields of the same name.
        shape = tuple(fields) if last is None else (*fields, None, *last)
        layout = self._layouts.get(shape)
        if layout is None:
            layout = self._layout(fields, last)
            if len(self._layouts) >= _MEMO_LIMIT:
                self._layouts.clear()
            self._layouts[shape] = layout
        if last is not None:
            fields = {**fields, **last}
        for key, encoded_key in layout:
            parts.append(encoded_key + _value_text(fields[key]))
        parts.append("}")
        return "".join(parts)

    @staticmethod
    def _layout(
        fields: Mapping[str, object], last: Mapping[str, object] | None
    ) -> list[tuple[str, str]]:
        """``(key, ',"key":')`` in the order the line writes them."""
        keys = [key for key in sorted(fields) if not key.startswith("_")]
        if last:
            keys = [key for key in keys if key not in last] + list(last)
        return [(key, f",{_quote(key)}:") for key in keys]


def _value_text(value: object) -> str:
    """A field's value as ``json.dumps`` writes it in the line: plain types as they are,
    anything else as its ``str()``. The plain types cost one C call each."""
    if type(value) is str:
        return _quote(value)
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is float and value - value == 0.0:  # finite
        return float.__repr__(value)
    # subclasses of the plain types, NaN and the infinities, anything else
    return _encode(value if isinstance(value, _PLAIN) else str(value))


class LineTemplate:
    """A line written again and again with one message and mostly the same fields (a line
    per request), its constant fields encoded once.

    ``constant`` fields are written into the template's text when it is made; the
    ``variable`` ones are given to each :func:`log_template` call, in that order. The line
    is the one ``logger.log(level, message, extra={**constant, **variable_values})`` writes
    through an :class:`HclogFormatter`, fields sorted by name, names starting with ``_``
    left out. A caller keeps one template per set of constant values, and so bounds them.

    Raises:
        KeyError: a field would overwrite a ``LogRecord`` attribute, as with ``extra``.
        ValueError: a field is named twice.
    """

    __slots__ = ("constant", "holes", "literals", "message", "size", "variable")

    def __init__(
        self, message: str, constant: Mapping[str, object], variable: Sequence[str]
    ) -> None:
        names = [*constant, *variable]
        clash = _STANDARD_ATTRS.intersection(names)
        if clash:
            raise KeyError(f"Attempt to overwrite {min(clash)!r} in LogRecord")
        if len(set(names)) != len(names):
            raise ValueError(f"a field is named twice in {names}")
        self.message = message
        self.constant = dict(constant)
        self.variable = tuple(variable)
        position = {key: index for index, key in enumerate(self.variable)}
        literals, holes = ['"'], []
        for key in sorted(names):
            if key.startswith("_"):
                continue
            if key in position:
                literals[-1] += f",{_quote(key)}:"
                holes.append(position[key])
                literals.append("")
            else:
                literals[-1] += f",{_quote(key)}:{_value_text(self.constant[key])}"
        literals[-1] += "}"
        self.literals: tuple[str, ...] = tuple(literals)
        """The text between the variable fields' values: after the timestamp, up to the
        first value, and so on; the last closes the line."""
        self.holes: tuple[int, ...] = tuple(holes)
        """For each gap between literals, the index in ``variable`` of the value that fills it."""
        self.size = sum(map(len, literals))
        """Characters of the constant text, for callers that bound what they keep."""

    def fields(self, values: Sequence[object]) -> dict[str, object]:
        """The fields of the line with these variable ``values``, as ``extra`` for logging."""
        return {**self.constant, **dict(zip(self.variable, values, strict=True))}


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


BATCH_WINDOW = 0.02
"""Seconds an ``info`` or ``debug`` line may wait on the event loop for others to join it."""
BATCH_BYTES = 32 * 1024
"""Pending lines are written at once when they reach this size: half a Linux pipe buffer,
so that a write to the host's pipe does not block the loop on a reader that is behind."""


class LoopBatchedHandler(logging.StreamHandler[TextIO]):
    """Lines logged on an event loop's thread leave in few writes.

    A plugin that logs a line per request (an audit line, say) otherwise pays one write
    system call per line on the thread that serves every request, and the host pays a
    wake-up of its log reader for each. Lines below ``WARNING`` wait up to ``window``
    seconds (or until ``max_bytes`` are pending) for others; a ``WARNING`` or worse is
    written in the same loop turn, after the lines pending before it, so that the order is
    kept and nothing urgent waits. Lines from other threads, or with no loop running, are
    written at once; :meth:`flush` (called at exit by ``logging.shutdown``) writes whatever
    is pending. A process killed outright loses at most ``window`` seconds of ``info`` lines.
    """

    def __init__(
        self, stream: TextIO, window: float = BATCH_WINDOW, max_bytes: int = BATCH_BYTES
    ) -> None:
        super().__init__(stream)
        self.window = window
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one the handles are on

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (logging.Handler.handle).
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._enqueue(line, record.levelno)

    def emit_fields(
        self, levelno: int, name: str, message: str, fields: Mapping[str, object]
    ) -> None:
        """Write the line of a record with these ``extra`` fields, made without a record.

        :func:`log_fields` calls it when this handler is the only one the record would
        reach; the line is the one :meth:`emit` writes for such a record.
        """
        formatter = self.formatter
        assert isinstance(formatter, HclogFormatter)
        line = formatter.format_fields(levelno, name, message, time.time(), fields)
        with self.lock:  # type: ignore[union-attr]
            self._enqueue(line, levelno)

    def emit_template(
        self, levelno: int, name: str, template: LineTemplate, values: Sequence[object]
    ) -> None:
        """Write the line of ``template`` with these variable ``values``, made without a
        record (:func:`log_template`, under the same conditions as :meth:`emit_fields`)."""
        formatter = self.formatter
        assert isinstance(formatter, HclogFormatter)
        line = formatter.format_template(levelno, name, time.time(), template, values)
        with self.lock:  # type: ignore[union-attr]
            self._enqueue(line, levelno)

    def _enqueue(self, line: str, levelno: int) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: write at once, after what is pending
            self._write(self._take() + line + self.terminator)
            return
        if loop is not self._loop:
            # A new event loop: what the last one scheduled will never run (it stopped
            # before its window ended); its lines are still pending and go out first.
            self._loop = loop
            self._timer = self._soon = None
        self._pending.append(line)
        self._pending_bytes += len(line)
        if levelno >= logging.WARNING or self._pending_bytes >= self.max_bytes:
            if self._soon is None:
                self._soon = loop.call_soon(self._flush_from_loop)
        elif self._timer is None and self._soon is None:
            self._timer = loop.call_later(self.window, self._flush_from_loop)

    def _take(self) -> str:
        if not self._pending:
            return ""
        lines, self._pending = self._pending, []
        self._pending_bytes = 0
        return self.terminator.join(lines) + self.terminator

    def _write(self, text: str) -> None:
        if not text:
            return
        # The host may have closed our stderr: then there is no one left to tell.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def _flush_from_loop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._soon = None
        self.flush()

    def flush(self) -> None:
        """Write the lines logged so far."""
        with self.lock:  # type: ignore[union-attr]
            self._write(self._take())


def log_fields(
    logger: logging.Logger, level: int, message: str, fields: Mapping[str, object]
) -> None:
    """``logger.log(level, message, extra=fields)``, cheaper for a line per request.

    When the record would reach exactly one handler, a :class:`LoopBatchedHandler` with an
    :class:`HclogFormatter` and no filter on the way (as :func:`configure_logging` sets it
    up), the line is formatted from ``fields`` directly: no ``LogRecord`` is made and no
    handler chain walked, and the line is the same. Any other logging set-up (a test's
    capture handler, a filter, a second handler) gets the ordinary call.

    Raises:
        KeyError: a field would overwrite a ``LogRecord`` attribute, as with ``extra``.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _sole_hclog_handler(logger)
    if handler is None or level < handler.level:
        logger.log(level, message, extra=fields, stacklevel=2)
        return
    clash = fields.keys() & _STANDARD_ATTRS
    if clash:
        raise KeyError(f"Attempt to overwrite {min(clash)!r} in LogRecord")
    handler.emit_fields(level, logger.name, message, fields)


def log_template(
    logger: logging.Logger, level: int, template: LineTemplate, values: Sequence[object]
) -> None:
    """:func:`log_fields` for a line made from ``template``, with ``values`` for its
    variable fields: only those are encoded per call.

    Under any other logging set-up than the one :func:`log_fields` writes directly for, the
    ordinary call gets the same fields.

    Raises:
        ValueError: ``values`` do not match the template's variable fields one for one.
    """
    if len(values) != len(template.variable):
        raise ValueError(f"{len(values)} values for the fields {template.variable}")
    if not logger.isEnabledFor(level):
        return
    handler = _sole_hclog_handler(logger)
    if handler is None or level < handler.level:
        logger.log(level, template.message, extra=template.fields(values), stacklevel=2)
        return
    handler.emit_template(level, logger.name, template, values)


def _sole_hclog_handler(logger: logging.Logger) -> LoopBatchedHandler | None:
    """The one handler a record of ``logger`` would reach, if it is a filterless
    :class:`LoopBatchedHandler` formatting hclog lines and no logger on the way filters."""
    found: LoopBatchedHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (
                found is not None
                or type(handler) is not LoopBatchedHandler
                or handler.filters
                or type(handler.formatter) is not HclogFormatter
            ):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def configure_logging(level: str | None, quiet: Iterable[str] = ()) -> None:
    """Send the root logger to stderr in hclog JSON at ``level`` (default info).

    grpclib's HTTP/2 loggers and the ``quiet`` ones are raised to WARNING. Records no longer
    look up their caller's frame, thread or process (``logging.logThreads`` and the like are
    turned off): the hclog line shows none of them.
    """
    handler = LoopBatchedHandler(sys.stderr)
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
    # What the hclog line never shows, records need not collect (the logging HOWTO's
    # "Optimization" switches): the caller's frame, thread, process and multiprocessing
    # names. A plugin that logs a line per request pays for them on every request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
