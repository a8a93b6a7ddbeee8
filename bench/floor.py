"""The measured floor for any external plugin: ``nullgo``, a zero-work Go plugin.

Its sources live in ``shared/anchors/nullgo`` next to the repository checkout (``../shared``
relative to the repo; ``NULLGO_DIR`` overrides). It builds offline from Debian packages; the
benchmark installs them when it runs as root with apt, and otherwise says which are missing
and skips the floor. Builds are cached under ``build/nullgo`` keyed by the sources' hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "nullgo"
PACKAGES = (
    "golang-go",
    "golang-github-hashicorp-go-plugin-dev",
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    "golang-github-golang-protobuf-1-5-dev",
    "golang-github-hashicorp-go-hclog-dev",
    "protobuf-compiler",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
)
TOOLS = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
# go-plugin's Go sources, which have no binary to look for on PATH.
GO_SOURCES = Path("/usr/share/gocode/src/github.com/hashicorp/go-plugin")


@dataclass(frozen=True)
class Floor:
    """The built nullgo executable, or why there is none."""

    executable: Path | None
    note: str


def source_dir() -> Path | None:
    """``shared/anchors/nullgo``, found from ``NULLGO_DIR`` or by walking up from the repo."""
    override = os.environ.get("NULLGO_DIR")
    if override:
        return Path(override) if (Path(override) / "build.sh").is_file() else None
    for parent in (REPO, *REPO.parents):
        candidate = parent / "shared" / "anchors" / "nullgo"
        if (candidate / "build.sh").is_file():
            return candidate
    return None


def _missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not GO_SOURCES.is_dir():
        missing.append(str(GO_SOURCES))
    return missing


def _install_packages() -> str | None:
    """Install the Debian packages (root with apt only); ``None`` on success, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root with apt-get"
    command = ["apt-get", "install", "-y", "-q", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, capture_output=True, env=env, check=False).returncode == 0:
        return None
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    return None if result.returncode == 0 else f"apt-get install failed: {result.stderr[-300:]}"


def _sources_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_floor() -> Floor:
    """Build (or reuse) nullgo; never raises for a missing toolchain, it reports it."""
    source = source_dir()
    if source is None:
        return Floor(None, "floor skipped: shared/anchors/nullgo not found next to the repo")
    out = CACHE / _sources_digest(source)
    executable = out / "nullgo"
    if executable.is_file():
        return Floor(executable, f"nullgo from {source} (cached build)")
    if _missing_tools():
        why = _install_packages()
        still = _missing_tools()
        if still:
            return Floor(
                None,
                f"floor skipped: Go toolchain missing ({', '.join(still)}; {why}). "
                f"Install: apt-get install -y {' '.join(PACKAGES)}",
            )
    result = subprocess.run(
        ["sh", str(source / "build.sh"), str(out)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not executable.is_file():
        return Floor(None, f"floor skipped: nullgo build failed: {result.stderr[-500:]}")
    return Floor(executable, f"nullgo built from {source}")
