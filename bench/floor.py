"""The measured floor for any external plugin: ``nullgo``, a zero-work Go plugin.

Its sources live in ``shared/anchors/nullgo`` next to the repository checkout (``../shared``
relative to the repo; ``NULLGO_DIR`` overrides). It builds offline from Debian packages; the
benchmark installs them when it runs as root with apt, and otherwise says which are missing
and skips the floor. Builds are cached under ``build/nullgo`` keyed by the sources' hash.

A second build, ``nullgo`` with an audit line, is the same plugin writing one hclog JSON line
per ordinary request with the fields of the engine's audit line, the way a Go plugin (the Go
Skyflow plugin among them) writes one: what the host charges any plugin for a line per
request, measured rather than inferred (issue 12).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
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


# The audit line, added to nullgo's package by the benchmark: the engine's fields (as a cache
# hit writes them with telemetry off) through the hclog logger a Go plugin logs with. The
# logger is made at package initialisation, as a Go plugin makes its logger before
# plugin.Serve: it writes to the real stderr, the one the host reads and parses.
AUDIT_LINE_GO = """
// Added by skyflow-vault-plugin's benchmark (bench/floor.py): the audit line.
var auditLog = hclog.New(&hclog.LoggerOptions{
	Name:       "skyflow.audit",
	Level:      hclog.Info,
	Output:     os.Stderr,
	JSONFormat: true,
})

func auditLine(req *pb.Request, started time.Time) {
	mountPath := req.GetMountPoint()
	mount := mountPath
	for len(mount) > 0 && mount[len(mount)-1] == '/' {
		mount = mount[:len(mount)-1]
	}
	role := req.GetPath()
	for i := len(role) - 1; i >= 0; i-- {
		if role[i] == '/' {
			role = role[i+1:]
			break
		}
	}
	auditLog.Info("token request",
		"mount", mount, "mount_path", mountPath, "role", role,
		"operation", req.GetOperation(), "outcome", "success", "cache", "hit",
		"application", "none",
		"duration_ms", float64(time.Since(started).Microseconds())/1000,
		"trace_id", "", "vault_request_id", req.GetId(),
		"remote_addr", req.GetConnection().GetRemoteAddr())
}
"""
# Where HandleRequest answers an ordinary request (not resolve-path, resolve-role or
# rollback), and what it does there instead: the line, timed from the answer's start.
AUDIT_ANCHOR = "\treturn okReply, nil\n}\n"
AUDIT_HOOK = "\tdefer auditLine(args.GetRequest(), time.Now())\n" + AUDIT_ANCHOR


def audit_line_source(main_go: str) -> str:
    """nullgo's ``main.go`` with the audit line written for every ordinary request.

    Raises:
        ValueError: ``main.go`` no longer answers ordinary requests where the hook expects.
    """
    if main_go.count(AUDIT_ANCHOR) != 1:
        raise ValueError(f"nullgo's main.go has {main_go.count(AUDIT_ANCHOR)} places for the hook")
    return main_go.replace(AUDIT_ANCHOR, AUDIT_HOOK) + AUDIT_LINE_GO


def build_floor(audit_line: bool = False) -> Floor:
    """Build (or reuse) nullgo, with the audit line if asked; never raises for a missing
    toolchain or a changed anchor, it reports them."""
    source = source_dir()
    if source is None:
        return Floor(None, "floor skipped: shared/anchors/nullgo not found next to the repo")
    digest = _sources_digest(source)
    what = "nullgo"
    if audit_line:
        patch = (AUDIT_HOOK + AUDIT_LINE_GO).encode()
        digest += "-audit-" + hashlib.sha256(patch).hexdigest()[:8]
        what = "nullgo with the audit line"
    out = CACHE / digest
    executable = out / "nullgo"
    if executable.is_file():
        return Floor(executable, f"{what} from {source} (cached build)")
    if _missing_tools():
        why = _install_packages()
        still = _missing_tools()
        if still:
            return Floor(
                None,
                f"floor skipped: Go toolchain missing ({', '.join(still)}; {why}). "
                f"Install: apt-get install -y {' '.join(PACKAGES)}",
            )
    with tempfile.TemporaryDirectory(prefix="nullgo-") as scratch:
        build_from = source
        if audit_line:
            build_from = Path(scratch) / "nullgo"
            shutil.copytree(source, build_from)
            main_go = build_from / "main.go"
            main_go.chmod(0o644)  # the anchor's files are read-only
            try:
                main_go.write_text(audit_line_source(main_go.read_text()))
            except ValueError as exc:
                return Floor(None, f"{what} skipped: {exc}")
        result = subprocess.run(
            ["sh", str(build_from / "build.sh"), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0 or not executable.is_file():
        return Floor(None, f"{what} skipped: build failed: {result.stderr[-500:]}")
    return Floor(executable, f"{what} built from {source}")
