"""The plugin's logs reach the server log under the plugin's name, at their own level."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

from skyflow_devtools.catalog import install_plugin, python_launcher
from skyflow_devtools.client import BaoError

if TYPE_CHECKING:
    from conftest import SkyflowStack, UnitMount

pytestmark = pytest.mark.e2e


def test_the_audit_line_appears_in_the_server_log_at_info(
    stack: SkyflowStack, unit_mount: UnitMount
) -> None:
    mount = unit_mount(roles={"producer": ["r1"]})
    token = stack.client().read(f"{mount}/creds/producer")["data"]["access_token"]
    deadline = time.monotonic() + 10
    line = ""
    while time.monotonic() < deadline and not line:
        for candidate in stack.bao.log_path.read_text().splitlines():
            if "token request" in candidate and mount in candidate:
                line = candidate
        time.sleep(0.2)
    # hclog JSON from the plugin's stderr is parsed by the host and re-logged at its level,
    # under secrets.<plugin>.<accessor>.<plugin>.
    assert re.search(r"\[INFO\]\s+secrets\.skyflow\.skyflow_[0-9a-f]+\.skyflow", line), line
    assert "outcome=success" in line
    assert "@level" not in line  # parsed, not passed through as raw JSON
    assert token not in stack.bao.log_path.read_text()


def test_a_bad_engine_variable_is_an_error_line_in_the_server_log(stack: SkyflowStack) -> None:
    """The plugin stops at start instead of failing each mount's Setup, and the server's log
    says which variable and why, at error level."""
    install_plugin(
        stack.bao,
        name="skyflow-bad-env",
        executable=python_launcher("skyflow_vault_plugin.cli"),
        env={"SKYFLOW_REQUEST_DEADLINE": "soon"},
    )
    with pytest.raises(BaoError):
        stack.client().enable_secrets("bad-env", "skyflow-bad-env")
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline and not lines:
        lines = [
            candidate
            for candidate in stack.bao.log_path.read_text().splitlines()
            if "SKYFLOW_REQUEST_DEADLINE" in candidate and "cannot start" in candidate
        ]
        time.sleep(0.2)
    assert lines, stack.bao.log_tail()
    assert "[ERROR]" in lines[0], lines[0]
    assert "'soon'" in lines[0]
