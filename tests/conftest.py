"""Fixtures shared by the engine's tests (tests/skyflow) and the emulator's (tests/emulator):
one in-process Skyflow emulator per module, its service accounts, and a clean slate around
each test that asks for it.

The e2e and reliability suites run the emulator as a process instead (tests/stack.py); their
conftest.py files define their own ``fresh_emulator``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from skyflow_emulator import InProcessEmulator


@pytest.fixture(scope="module")
def emulator() -> InProcessEmulator:
    return InProcessEmulator()


@pytest.fixture(scope="module")
def creds(emulator: InProcessEmulator) -> dict[str, str]:
    return emulator.create_account("tests-a")


@pytest.fixture(scope="module")
def other_creds(emulator: InProcessEmulator) -> dict[str, str]:
    return emulator.create_account("tests-b")


@pytest.fixture
def fresh_emulator(emulator: InProcessEmulator) -> Iterator[None]:
    """No faults, zero counters and one-hour tokens, before and after the test."""
    emulator.state.reset_faults()
    emulator.state.reset_stats()
    emulator.state.token_lifetime = 3600
    yield
    emulator.state.reset_faults()
    emulator.state.token_lifetime = 3600
