"""Shared fixtures for end-to-end tests: a real OpenBao with the Skyflow plugin installed as
an operator would, and the Skyflow emulator over real HTTPS.

Each test gets fresh mounts (``unit_mount``) so tests stay independent while the server and
the emulator are started once per module (they cost seconds each).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skyflow_emulator.process import EmulatorAdmin
from tests.stack import Stack, start_stack

SkyflowStack = Stack
"""The shared stack (tests/stack.py), under the name this suite's modules import."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SkyflowStack]:
    """OpenBao + plugin (installed as an operator would) + emulator, shared by a module's
    tests."""
    with start_stack(tmp_path_factory.mktemp("stack"), as_operator=True) as running:
        yield running


@pytest.fixture
def fresh_emulator(stack: SkyflowStack) -> Iterator[EmulatorAdmin]:
    """The emulator with faults and counters cleared before and after the test, and its
    token lifetime back to one hour after it."""
    stack.admin.reset()
    yield stack.admin
    stack.admin.reset()
    stack.admin.set_token_lifetime(3600)


UnitMount = Callable[..., str]


@pytest.fixture
def unit_mount(stack: SkyflowStack) -> UnitMount:
    """Factory for fresh, configured mounts (see :meth:`SkyflowStack.mount`)."""
    return stack.mount


@pytest.fixture
def account_file(stack: SkyflowStack, tmp_path: Path) -> Path:
    """``sa.json``: a fresh service account's credentials file, for ``credentials_json=@``."""
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(stack.new_account()))
    return path
