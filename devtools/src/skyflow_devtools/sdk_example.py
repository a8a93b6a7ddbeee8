"""The SDK's example plugin (sdk/examples/kv.py) as an executable OpenBao can run.

The example is a file of the repository, not an installed module, so its launcher runs the
file by path under this interpreter (whose virtualenv has the SDK installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
KV_EXAMPLE = REPO_ROOT / "sdk" / "examples" / "kv.py"


def kv_example_launcher() -> bytes:
    """A launcher script that runs the SDK's key/value example plugin."""
    if not KV_EXAMPLE.is_file():
        raise FileNotFoundError(f"the SDK example plugin is missing: {KV_EXAMPLE}")
    return (
        f"#!{sys.executable}\nimport runpy\n"
        f"runpy.run_path({str(KV_EXAMPLE)!r}, run_name='__main__')\n"
    ).encode()
