"""Plugin files for a server's plugin directory (the catalog calls run in test_openbao.py)."""

from __future__ import annotations

import hashlib
import stat
import sys
from pathlib import Path

import pytest

from skyflow_devtools.catalog import python_launcher, write_plugin_executable


def test_python_launcher_runs_the_entry_point_under_this_interpreter() -> None:
    script = python_launcher("pkg.mod", "run")
    assert (
        script
        == (f"#!{sys.executable}\nimport sys\nfrom pkg.mod import run\nsys.exit(run())\n").encode()
    )
    with pytest.raises(ValueError, match="module/function"):
        python_launcher("pkg; import os")
    with pytest.raises(ValueError, match="module/function"):
        python_launcher("pkg", "a.b")


def test_write_plugin_executable_sets_mode_and_sha(tmp_path: Path) -> None:
    path, digest = write_plugin_executable(tmp_path / "plugins", "p", b"#!/bin/sh\n")
    assert path == tmp_path / "plugins" / "p"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert digest == hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    # Replacing works and leaves no temporary files behind.
    write_plugin_executable(tmp_path / "plugins", "p", b"#!/bin/sh\nexit 0\n")
    assert [p.name for p in (tmp_path / "plugins").iterdir()] == ["p"]
    with pytest.raises(ValueError, match="plain file name"):
        write_plugin_executable(tmp_path, "../p", b"")
