"""Waiting, finding and reaping processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from skyflow_devtools.catalog import write_plugin_executable
from skyflow_devtools.client import BaoConnectionError
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import alive, plugin_pids, poll_until, processes_matching, reap


def test_poll_until_returns_the_first_truthy_value_and_retries_harness_errors() -> None:
    answers: list[object] = [BaoConnectionError("refused"), None, False, "done", "later"]

    def step() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert poll_until(step, timeout=10, interval=0) == "done"
    assert answers == ["later"]


def test_poll_until_times_out_naming_the_wait_and_chaining_the_last_error() -> None:
    def refused() -> None:
        raise BaoConnectionError("refused")

    with pytest.raises(TimeoutError, match=r"the thing: not reached within 0\.0 s") as info:
        poll_until(refused, timeout=0, message="the thing")
    assert isinstance(info.value.__cause__, BaoConnectionError)


def test_poll_until_lets_errors_outside_retry_on_through() -> None:
    calls = 0

    def refused() -> None:
        nonlocal calls
        calls += 1
        raise BaoConnectionError("refused")

    with pytest.raises(BaoConnectionError):
        poll_until(refused, timeout=10, retry_on=())
    assert calls == 1


def test_alive_is_false_for_a_zombie_and_for_a_reaped_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not waited for yet: once it exits it is a zombie, which counts as dead.
    poll_until(lambda: not alive(proc.pid), timeout=10, interval=0.01)
    assert proc.wait(timeout=10) == 0
    assert not alive(proc.pid)


def _sleeper(tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    path, _ = write_plugin_executable(
        tmp_path, name, f"#!{sys.executable}\nimport time\ntime.sleep(60)\n".encode()
    )
    return subprocess.Popen([str(path)], start_new_session=True)


def test_reap_kills_what_find_returns_and_reports_it(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path, "sleeper")
    marker = str(tmp_path / "sleeper")
    try:
        poll_until(lambda: processes_matching(lambda arg: arg == marker), timeout=10)
        killed, left = reap(lambda: processes_matching(lambda arg: arg == marker), grace=0.1)
        assert (killed, left) == ([proc.pid], [])
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_reap_waits_for_processes_that_exit_within_the_grace_time() -> None:
    finds: list[list[int]] = [[12345], [12345], []]
    assert reap(lambda: finds.pop(0) if finds else [], grace=10) == ([], [])
    assert finds == []


def test_reap_plugins_kills_processes_started_from_the_plugin_dir(tmp_path: Path) -> None:
    server = OpenBaoServer.dev(tmp_path)
    # A stand-in for an orphaned plugin: a launcher script in this server's plugin directory.
    path, _ = write_plugin_executable(
        server.plugin_dir, "stray", f"#!{sys.executable}\nimport time\ntime.sleep(60)\n".encode()
    )
    proc = subprocess.Popen([str(path)], start_new_session=True)
    try:
        poll_until(lambda: plugin_pids(server, "stray") == [proc.pid], timeout=10)
        assert server.reap_plugins(grace=0.1) == [proc.pid]
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert plugin_pids(server) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)
