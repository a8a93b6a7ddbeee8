"""The generated protocol package: protobuf's pure-Python messages load only when used."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Round-trips a message, then prints what became of protobuf's pure-Python message module.
_ROUND_TRIP = """
import sys
from vault_plugin_sdk.plugin.pb import backend_pb2

args = backend_pb2.HandleRequestArgs(storage_id=7)
args.request.path = "creds/producer"
again = backend_pb2.HandleRequestArgs.FromString(args.SerializeToString())
assert again.storage_id == 7 and again.request.path == "creds/producer", again
module = sys.modules["google.protobuf.internal.python_message"]
print(type(module).__name__, "google.protobuf.text_format" in sys.modules)
"""


def _round_trip(implementation: str | None) -> list[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if implementation is not None:
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = implementation
    done = subprocess.run(
        [sys.executable, "-c", _ROUND_TRIP],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def test_under_upb_the_pure_python_messages_are_never_loaded() -> None:
    """protobuf's ``descriptor_pool`` imports them (and the text format) for nothing under
    its C implementation: about 7% of the plugin's start, in instructions."""
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "upb":
        pytest.fail(f"protobuf runs {api_implementation.Type()}; the lock pins a upb wheel")
    assert _round_trip(None) == ["_LazyModule", "False"]


def test_the_pure_python_implementation_still_works() -> None:
    """Where protobuf runs in Python, its message module loads as before."""
    assert _round_trip("python") == ["module", "True"]
