"""The file Vault/OpenBao runs: it verifies the code it is about to run, then runs it.

A host pins the sha256 of the one file it executes. For a Python plugin that file alone
proves little: the code it imports could change underneath it. ``skyflow-vault-plugin
install`` therefore writes a *launcher* made of three parts, all covered by the registered
sha256:

1. a shebang running the virtualenv's interpreter isolated: ``-I`` (no ``PYTHON*``
   variables, no user site-packages, no script directory on ``sys.path``) and ``-S`` (no
   ``site`` module, so no ``.pth`` file runs);
2. the text of this module (standard library only);
3. a manifest: the sha256 of every file of the plugin package and of its runtime
   dependencies (the files their ``dist-info/RECORD`` lists), and of the byte-code compiled
   from each Python file at install time into one file next to the launcher.

When run, :func:`run`:

1. hashes every file in the manifest. On any difference it names the file on stderr and
   exits with status 3, before importing anything from those directories;
2. puts only the manifest's directories after the standard library on ``sys.path``;
3. installs an import hook for those directories: only manifest files load, extension
   modules only when pinned, and Python modules run from the pinned byte-code, each piece
   hashed again as it is loaded. Nothing is loaded from ``__pycache__``, whose files nobody
   pins;
4. runs the entry point, ``skyflow_vault_plugin.cli:main``.

The interpreter and its standard library are outside the manifest: they belong to the
operating system (or the Python build) the virtualenv was made from.

Set ``SKYFLOW_LAUNCHER_TIMING=1`` to get one line on stderr with the verification time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from types import CodeType
from typing import Any

FORMAT = 1
EXIT_TAMPERED = 3
TIMING_ENV = "SKYFLOW_LAUNCHER_TIMING"
_CHUNK = 1 << 20


class IntegrityError(Exception):
    """A pinned file is missing or differs from what was installed."""


class NotPinned(ImportError):
    """A module file in a pinned directory that the manifest does not list, or whose pinned
    byte-code no longer matches."""


def hash_fd(fd: int) -> tuple[str, int]:
    """``(hex sha256, size)`` of what an open file descriptor reads from its start."""
    import hashlib

    digest = hashlib.sha256()
    size = offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        size += len(chunk)
        offset += len(chunk)


def hash_file(path: str) -> tuple[str, int]:
    """``(hex sha256, size)`` of a file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


class Pinned:
    """The parsed manifest.

    Attributes:
        roots: directories put on ``sys.path``, in order.
        files: every pinned file (absolute path) and its sha256.
        code: for each pinned ``.py`` file, ``(offset, length, sha256)`` of its byte-code in
            the byte-code file.
        bytecode: path of the byte-code file; ``bytecode_sha256`` its sha256.
    """

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        if manifest.get("format") != FORMAT:
            raise IntegrityError(f"unknown manifest format {manifest.get('format')!r}")
        self.roots: list[str] = [str(r) for r in manifest["path"]]
        self.entry = str(manifest["entry"])
        self.magic = bytes.fromhex(str(manifest["magic"]))
        self.bytecode = str(manifest["bytecode"]["file"])
        self.bytecode_sha256 = str(manifest["bytecode"]["sha256"])
        self.files: dict[str, str] = {}
        self.code: dict[str, tuple[int, int, str]] = {}
        for root_index, rel, digest, code in manifest["files"]:
            path = f"{self.roots[root_index]}/{rel}"
            self.files[path] = digest
            if code:
                offset, length, code_digest = code
                self.code[path] = (int(offset), int(length), str(code_digest))


def verify(pinned: Pinned) -> tuple[int, int, int]:
    """Hash every pinned file and the byte-code file.

    Returns ``(files, bytes, fd)``: how much was checked, and a descriptor open on the
    byte-code file that was checked (modules are read from it, so replacing the file by a new
    install does not change what this process loads).

    Raises:
        IntegrityError: naming the first file that is missing or differs.
    """
    count = size = 0
    for path, expected in pinned.files.items():
        found, length = _hash_checked(path)
        if found != expected:
            raise IntegrityError(
                f"{path} changed since it was installed "
                f"(sha256 {found[:16]}..., installed {expected[:16]}...)"
            )
        count += 1
        size += length
    try:
        fd = os.open(pinned.bytecode, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IntegrityError(f"{pinned.bytecode} is missing (install writes it)") from None
    found, length = hash_fd(fd)
    magic = os.pread(fd, len(pinned.magic), 0)
    if found != pinned.bytecode_sha256 or magic != pinned.magic:
        os.close(fd)
        raise IntegrityError(f"{pinned.bytecode} changed since it was installed")
    return count + 1, size + length, fd


def _hash_checked(path: str) -> tuple[str, int]:
    try:
        return hash_file(path)
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing (it was there at install time)") from None
    except OSError as exc:
        raise IntegrityError(f"{path} cannot be read: {exc.strerror}") from None


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def install_import_hook(pinned: Pinned, bytecode_fd: int) -> None:
    """Load modules from the pinned directories only as the manifest says (see module doc)."""
    import hashlib
    import marshal
    from importlib.machinery import (
        EXTENSION_SUFFIXES,
        SOURCE_SUFFIXES,
        ExtensionFileLoader,
        FileFinder,
        ModuleSpec,
        SourceFileLoader,
    )
    from types import ModuleType

    def refuse(path: str) -> NotPinned:
        return NotPinned(
            f"{path} is not pinned by this plugin's launcher; refusing to import it "
            "(re-run `skyflow-vault-plugin install` after changing the installed code)",
            path=path,
        )

    class PinnedSource(SourceFileLoader):
        def get_code(self, fullname: str) -> CodeType:
            path = self.get_filename(fullname)
            expected = pinned.files.get(path)
            if expected is None:
                raise refuse(path)
            code = pinned.code.get(path)
            if code is None:  # did not compile at install time: compile the pinned source
                source = self.get_data(path)
                if hashlib.sha256(source).hexdigest() != expected:
                    raise NotPinned(f"{path} changed since it was installed", path=path)
                compiled: CodeType = compile(source, path, "exec", dont_inherit=True)
                return compiled
            offset, length, digest = code
            data = os.pread(bytecode_fd, length, offset)
            if len(data) != length or hashlib.sha256(data).hexdigest() != digest:
                raise NotPinned(f"the pinned byte-code of {path} changed", path=path)
            loaded = marshal.loads(data)  # noqa: S302 -- pinned, sha256 checked just above
            if not isinstance(loaded, CodeType):
                raise NotPinned(f"the pinned byte-code of {path} is not code", path=path)
            return loaded

    class PinnedExtension(ExtensionFileLoader):
        def create_module(self, spec: ModuleSpec) -> ModuleType:
            if self.path not in pinned.files:
                raise refuse(self.path)
            return super().create_module(spec)

    roots = list(pinned.roots)

    def hook(entry: str) -> FileFinder:
        if not _under(entry, roots):
            raise ImportError("not a pinned directory")
        return FileFinder(
            entry, (PinnedExtension, EXTENSION_SUFFIXES), (PinnedSource, SOURCE_SUFFIXES)
        )

    sys.path_hooks.insert(0, hook)
    for root in roots:
        sys.path_importer_cache.pop(root, None)
        if root not in sys.path:
            sys.path.append(root)


def run(manifest_text: str) -> int:
    """Verify, then run the entry point; the process exit status."""
    import json
    from importlib.util import MAGIC_NUMBER

    started = time.perf_counter()
    sys.dont_write_bytecode = True
    try:
        pinned = Pinned(json.loads(manifest_text))
        if pinned.magic != MAGIC_NUMBER:
            raise IntegrityError(
                f"{sys.executable} is not the Python the plugin was installed with "
                "(its byte-code format differs)"
            )
        files, size, fd = verify(pinned)
    except IntegrityError as exc:
        sys.stderr.write(
            f"skyflow-vault-plugin: refusing to start: {exc}\n"
            "Re-run `skyflow-vault-plugin install` and register the sha256 it prints.\n"
        )
        sys.stderr.flush()
        return EXIT_TAMPERED
    if os.environ.get(TIMING_ENV) == "1":
        elapsed = (time.perf_counter() - started) * 1000
        sys.stderr.write(
            f"skyflow-vault-plugin: verified {files} files ({size / 1e6:.1f} MB) "
            f"in {elapsed:.1f} ms\n"
        )
        sys.stderr.flush()
    install_import_hook(pinned, fd)
    import importlib

    module_name, _, function = pinned.entry.partition(":")
    try:
        entry = getattr(importlib.import_module(module_name), function)
        return int(entry() or 0)
    except NotPinned as exc:
        sys.stderr.write(f"skyflow-vault-plugin: refusing to start: {exc}\n")
        sys.stderr.flush()
        return EXIT_TAMPERED
