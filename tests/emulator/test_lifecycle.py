"""``with`` support shared by the emulator's process and client and the OpenBao harness."""

from __future__ import annotations

import pytest

from skyflow_emulator.lifecycle import Closeable, Startable


class _Recorder(Startable):
    def __init__(self, *, fail_start: bool = False) -> None:
        self.calls: list[str] = []
        self._fail_start = fail_start

    def start(self) -> None:
        self.calls.append("start")
        if self._fail_start:
            raise RuntimeError("half-way")

    def close(self) -> None:
        self.calls.append("close")


class _Handle(Closeable):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_closeable_gives_itself_and_closes_on_exit_also_after_an_error() -> None:
    handle = _Handle()
    with handle as entered:
        assert entered is handle
        assert handle.closed == 0
    assert handle.closed == 1
    with pytest.raises(ValueError, match="in the block"):
        _raise_inside(handle)
    assert handle.closed == 2


def _raise_inside(handle: _Handle) -> None:
    with handle:
        raise ValueError("in the block")


def test_startable_starts_on_entry_and_closes_on_exit() -> None:
    recorder = _Recorder()
    with recorder as entered:
        assert entered is recorder
        assert recorder.calls == ["start"]
    assert recorder.calls == ["start", "close"]


def test_startable_closes_at_once_when_the_start_fails() -> None:
    recorder = _Recorder(fail_start=True)
    with pytest.raises(RuntimeError, match="half-way"), recorder:
        pytest.fail("the block must not run")
    assert recorder.calls == ["start", "close"]
