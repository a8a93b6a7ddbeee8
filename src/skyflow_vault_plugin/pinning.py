"""What the launcher pins: every file the plugin can import, and their byte-code.

The host pins the sha256 of the one file it runs. The launcher written by
:func:`skyflow_vault_plugin.install.install` embeds the sha256 of every file the plugin can
import: the ``skyflow_vault_plugin`` and ``vault_plugin_sdk`` packages, the installed files of
its runtime dependencies (their ``dist-info/RECORD``), and byte-code compiled from them now
(the SDK's test helpers, ``vault_plugin_sdk.testing``, excepted). This module finds those
files and builds the manifest; :mod:`skyflow_vault_plugin.launcher` checks them at every start.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import marshal
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import MAGIC_NUMBER
from pathlib import Path

from . import launcher

__all__ = [
    "DIST_NAME",
    "ENTRY_POINT",
    "InstallError",
    "Manifest",
    "PinnedFile",
    "build_manifest",
    "collect_files",
    "marshalled_code",
    "runtime_distributions",
    "sha256_hex",
]

DIST_NAME = "skyflow-vault-plugin"
# The SDK the engine runs on: a top-level package of its own, in this distribution's wheel.
SDK_PACKAGE = "vault_plugin_sdk"
# Test helpers plugin authors use in their own tests: never run by the plugin, never pinned
# (an import of them from the launcher fails as "not pinned").
_UNPINNED_PACKAGES = ("vault_plugin_sdk/testing/",)
ENTRY_POINT = "skyflow_vault_plugin.cli:main"
# Never imported or read by the plugin (type stubs, C sources), or rewritten by installers
# depending on how a package was installed (RECORD and friends): pinning them would only make
# launchers differ between nodes that run the same code.
_UNPINNED_SUFFIXES = (".pyi", ".pyx", ".pxd", ".pxi", ".h", ".c", ".cpp", ".typed")
_UNPINNED_METADATA = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
_MARSHAL_VERSION = 2


class InstallError(Exception):
    """The plugin cannot be installed as asked; the message says what to fix."""


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of ``data``, the form the manifest and the catalog use."""
    return hashlib.sha256(data).hexdigest()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str | None:
    """The project name of a requirement, or ``None`` when it only applies to an extra."""
    head, _, marker = requirement.partition(";")
    if re.search(r"\bextra\s*==", marker):
        return None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", head)
    return match.group(1) if match else None


def runtime_distributions(name: str = DIST_NAME) -> list[metadata.Distribution]:
    """``name`` and every installed distribution it needs at run time, transitively.

    Requirements that only apply to an extra are skipped; a requirement whose environment
    marker excludes this platform is pinned anyway if it happens to be installed (pinning more
    files costs a little time, never safety).

    Raises:
        InstallError: ``name`` itself is not installed.
    """
    found: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        wanted = todo.pop()
        key = _canonical(wanted)
        if key in found:
            continue
        try:
            dist = metadata.distribution(wanted)
        except metadata.PackageNotFoundError:
            if wanted == name:
                raise InstallError(f"{name} is not installed in {sys.prefix}") from None
            continue  # e.g. a backport for older Pythons
        found[key] = dist
        for requirement in dist.requires or []:
            dependency = _requirement_name(requirement)
            if dependency is not None:
                todo.append(dependency)
    return [found[key] for key in sorted(found)]


@dataclass(frozen=True)
class PinnedFile:
    """One file to pin.

    Attributes:
        root_index: which ``sys.path`` directory of the manifest it lives under.
        rel: its path relative to that directory, with ``/``.
        path: the file itself.
    """

    root_index: int
    rel: str
    path: Path


@dataclass(frozen=True)
class Manifest:
    """What the launcher embeds, and the byte-code file it names.

    Attributes:
        json: the manifest, as the launcher embeds it.
        bytecode: the content of the byte-code file the manifest names (written by
            :func:`skyflow_vault_plugin.install.install`).
        files: how many files it pins, the byte-code file included.
        size: their total size in bytes.
    """

    json: str
    bytecode: bytes = field(repr=False)
    files: int
    size: int


def _record_digest(entry: metadata.PackagePath) -> str | None:
    """The hex sha256 pip recorded for a file, if it recorded one."""
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    value = entry.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _walk(directory: Path) -> Iterator[Path]:
    for current, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            yield Path(current) / name


def _sdk_dir() -> Path:
    """The SDK's package directory (walked like the engine's: an editable install's RECORD
    does not list it)."""
    spec = importlib.util.find_spec(SDK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InstallError(f"{SDK_PACKAGE} is not installed in {sys.prefix}; reinstall the plugin")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def collect_files(
    package_dir: Path, distributions: Iterable[metadata.Distribution]
) -> tuple[list[str], list[PinnedFile]]:
    """The directories to put on ``sys.path`` and every file to pin under them.

    The package directory is walked (an editable install's RECORD does not list it); each
    distribution contributes the files of its RECORD that live under its own directory
    (console scripts in ``bin/`` are not imported). ``__pycache__`` is left out: the launcher
    never loads byte-code from there.

    Raises:
        InstallError: an installed file no longer matches the sha256 pip recorded for it, so
            the virtualenv was changed after installation.
    """
    package_dir = package_dir.resolve()
    roots: list[str] = [str(package_dir.parent)]
    files: dict[str, PinnedFile] = {}

    def add(root: str, path: Path) -> None:
        if path.name.endswith(_UNPINNED_SUFFIXES) or (
            path.name in _UNPINNED_METADATA and path.parent.name.endswith(".dist-info")
        ):
            return
        rel = path.relative_to(root).as_posix()
        if rel.startswith(_UNPINNED_PACKAGES):
            return
        if root not in roots:
            roots.append(root)
        files.setdefault(f"{root}/{rel}", PinnedFile(roots.index(root), rel, path))

    for path in _walk(package_dir):
        add(roots[0], path)
    sdk_dir = _sdk_dir()
    for path in _walk(sdk_dir):
        add(str(sdk_dir.parent), path)
    for dist in distributions:
        base = Path(str(dist.locate_file(""))).resolve()
        for entry in dist.files or []:
            parts = entry.parts
            if not parts or parts[0] == ".." or "__pycache__" in parts:
                continue
            path = base / Path(*parts)
            if not path.is_file():
                continue
            recorded = _record_digest(entry)
            if recorded is not None and sha256_hex(path.read_bytes()) != recorded:
                raise InstallError(
                    f"{path} does not match the sha256 in {dist.metadata['Name']}'s RECORD: "
                    "the virtualenv changed after pip installed it; reinstall that package"
                )
            add(str(base), path)
    return roots, sorted(files.values(), key=lambda f: (f.root_index, f.rel))


def _compile(path: Path, source: bytes) -> bytes | None:
    """The marshalled code of a Python file, or ``None`` if it does not compile here."""
    try:
        return marshalled_code(path, source)
    except (SyntaxError, ValueError):
        return None  # e.g. a file for another Python; the launcher compiles it if ever imported


def marshalled_code(path: Path, source: bytes | str) -> bytes:
    """The code of a Python file compiled and marshalled, the same bytes at every install.

    Raises:
        SyntaxError, ValueError: it does not compile here.
    """
    code = compile(source, str(path), "exec", dont_inherit=True)
    # Version 2 has no back-references: versions 3+ mark objects by their reference count,
    # which depends on whatever else the installing process has loaded, so the same code
    # would give different bytes (and a different sha256) from one install to the next.
    return marshal.dumps(code, _MARSHAL_VERSION)


def build_manifest(
    roots: Sequence[str], files: Sequence[PinnedFile], bytecode_file: Path
) -> Manifest:
    """The manifest of ``files`` (on ``roots``), their byte-code to be written to
    ``bytecode_file``, and how many files and bytes that pins.

    The output only depends on the files' content and paths, so installing the same
    virtualenv at the same path on every node of a cluster gives the same launcher.
    """
    entries: list[list[object]] = []
    blob = bytearray(MAGIC_NUMBER)
    total = 0
    for item in files:
        data = item.path.read_bytes()
        total += len(data)
        code: list[object] = []
        if item.rel.endswith(".py"):
            marshalled = _compile(item.path, data)
            if marshalled is not None:
                code = [len(blob), len(marshalled), sha256_hex(marshalled)]
                blob += marshalled
        entries.append([item.root_index, item.rel, sha256_hex(data), code])
    content = bytes(blob)
    manifest = {
        "format": launcher.FORMAT,
        "entry": ENTRY_POINT,
        "magic": MAGIC_NUMBER.hex(),
        "path": list(roots),
        "bytecode": {"file": str(bytecode_file), "sha256": sha256_hex(content)},
        "files": entries,
    }
    return Manifest(
        json=json.dumps(manifest, separators=(",", ":")),
        bytecode=content,
        files=len(files) + 1,
        size=total + len(content),
    )
