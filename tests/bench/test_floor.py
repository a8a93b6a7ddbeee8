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


# -- nullgo with the audit line: nullgo's sources, with the line added for ordinary requests --

MAIN_GO = (
    "package main\n\n"
    "func (backendServer) HandleRequest(_ context.Context, args *pb.HandleRequestArgs) "
    "(*pb.HandleRequestReply, error) {\n"
    '\tswitch args.GetRequest().GetOperation() {\n\tcase "resolve-path":\n'
    "\t\treturn unsupportedReply, nil\n\t}\n"
    "\treturn okReply, nil\n}\n"
)


def test_audit_line_source_hooks_the_ordinary_answer_and_adds_the_line() -> None:
    patched = floor.audit_line_source(MAIN_GO)
    hooked = "\tdefer auditLine(args.GetRequest(), time.Now())\n\treturn okReply, nil\n}\n"
    assert hooked in patched
    assert "\t\treturn unsupportedReply, nil\n" in patched  # resolve-path writes no line
    assert patched.endswith(floor.AUDIT_LINE_GO)
    for field in ("mount", "mount_path", "role", "cache", "duration_ms", "vault_request_id"):
        assert f'"{field}", ' in floor.AUDIT_LINE_GO


@pytest.mark.parametrize("main_go", ["package main\n", MAIN_GO + MAIN_GO])
def test_audit_line_source_refuses_a_main_go_it_does_not_know(main_go: str) -> None:
    with pytest.raises(ValueError, match="places for the hook"):
        floor.audit_line_source(main_go)


def _fake_anchor(tmp_path: Path, main_go: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An anchor whose build script 'builds' nullgo by copying the main.go it was given,
    read-only as the real anchor's files are."""
    source = tmp_path / "anchor"
    source.mkdir()
    (source / "main.go").write_text(main_go)
    (source / "build.sh").write_text(
        'here=$(cd "$(dirname "$0")" && pwd)\nmkdir -p "$1" && cp "$here/main.go" "$1/nullgo"\n'
    )
    for path in (source / "main.go", source / "build.sh", source):
        path.chmod(0o555)
    monkeypatch.setenv("NULLGO_DIR", str(source))
    monkeypatch.setattr(floor, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(floor, "_missing_tools", list)
    return source


def test_nullgo_with_the_audit_line_is_built_from_a_patched_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _fake_anchor(tmp_path, MAIN_GO, monkeypatch)
    plain = floor.build_floor()
    logging = floor.build_floor(audit_line=True)
    assert plain.executable is not None
    assert logging.executable is not None
    assert plain.executable != logging.executable  # cached apart
    assert plain.executable.read_text() == MAIN_GO
    assert logging.executable.read_text() == floor.audit_line_source(MAIN_GO)
    assert (source / "main.go").read_text() == MAIN_GO  # the anchor itself is untouched
    assert logging.note.startswith("nullgo with the audit line built from")
    assert floor.build_floor(audit_line=True).note.endswith("(cached build)")


def test_nullgo_with_the_audit_line_is_skipped_with_the_reason_when_the_hook_has_no_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_anchor(tmp_path, "package main\n", monkeypatch)
    result = floor.build_floor(audit_line=True)
    assert result.executable is None
    assert (
        result.note
        == "nullgo with the audit line skipped: nullgo's main.go has 0 places for the hook"
    )
    assert floor.build_floor().executable is not None  # the plain floor does not need the hook
