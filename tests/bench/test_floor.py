"""The benchmark's Go floor: found next to the repo, and skipped with a reason when absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import floor


def test_nullgo_dir_override_without_build_script_is_not_a_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NULLGO_DIR", str(tmp_path))
    assert floor.source_dir() is None
    result = floor.build_floor()
    assert result.executable is None
    assert result.note.startswith("floor skipped")


def test_missing_toolchain_skips_the_floor_and_names_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "build.sh").write_text("exit 1\n")
    monkeypatch.setenv("NULLGO_DIR", str(tmp_path))
    monkeypatch.setattr(floor, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(floor, "TOOLS", ("no-such-go-tool",))
    monkeypatch.setattr(floor, "_install_packages", lambda: "not root with apt-get")
    result = floor.build_floor()
    assert result.executable is None
    assert "no-such-go-tool" in result.note
    assert "golang-github-hashicorp-go-plugin-dev" in result.note


def test_source_dir_is_found_by_walking_up_from_the_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchors = tmp_path / "shared" / "anchors" / "nullgo"
    anchors.mkdir(parents=True)
    (anchors / "build.sh").write_text("exit 0\n")
    monkeypatch.delenv("NULLGO_DIR", raising=False)
    monkeypatch.setattr(floor, "REPO", tmp_path / "checkout")
    assert floor.source_dir() == anchors
