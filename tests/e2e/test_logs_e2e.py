"""The plugin's logs reach the server log under the plugin's name, at their own level."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

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
