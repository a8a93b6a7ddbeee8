"""The file Vault/OpenBao runs: it verifies the code it is about to run, then runs it.

A host pins the sha256 of the one file it executes. For a Python plugin that file alone
proves little: the code it imports could change underneath it. ``skyflow-vault-plugin
install`` therefore writes a *launcher* made of four parts, all covered by the registered
sha256:

1. a shebang running the *real* interpreter (not the virtualenv's ``bin/python`` link)
   isolated: ``-I`` (no ``PYTHON*`` variables, no user site-packages, no script directory on
   ``sys.path``) and ``-S`` (no ``site`` module, so no ``.pth`` file runs). No file of the
   virtualenv is read before verification: not ``pyvenv.cfg``, not ``bin/python``;
2. the text of this module (standard library only);
3. the identity of that interpreter as it started at install time (``sys.executable``,
   ``sys.version``, the prefixes and ``sys.path``);
4. a manifest: the sha256 of every file of the plugin package and of its runtime
   dependencies (the files their ``dist-info/RECORD`` lists), and of the byte-code compiled
   from each Python file at install time into one file next to the launcher.

When run, :func:`run`:

1. compares the interpreter with the recorded identity before importing anything that is
   not built in or frozen; a ``pyvenv.cfg`` or ``python3.X._pth`` planted next to the
   interpreter changes its prefixes or ``sys.path``, and the launcher refuses to start;
2. hashes every file in the manifest. On any difference it names the file and exits with
   status 3, before importing anything from those directories;
3. puts only the manifest's directories after the standard library on ``sys.path``;
4. installs an import hook for those directories: only manifest files load. Python modules
   run from the pinned byte-code, hashed again as it is loaded; extension modules are read
   once (in step 2), and loaded from a sealed in-memory copy of exactly the bytes that were
   hashed (so swapping the file after the check changes nothing). Nothing is loaded from
   ``__pycache__``, whose files nobody pins;
5. limits ``importlib.metadata`` to the pinned distributions, and to their pinned files: a
   planted ``*.dist-info`` (entry points, which OpenTelemetry reads) is invisible;
6. runs the entry point, ``skyflow_vault_plugin.cli:main``.

The interpreter binary, its standard library and the operating system's libraries are
outside the manifest: they belong to the operating system (or the Python build). Their
directories must be writable only by root (docs/operations.md).

When the launcher refuses to start under a server (the go-plugin magic cookie is set), it
says why three times: an hclog JSON line at level ``error`` on stderr (the server logs it at
its default level), the same as plain text for people, and one line on stdout, which the
server quotes in the error the failed ``secrets enable`` or ``plugin reload`` returns.

Set ``SKYFLOW_LAUNCHER_TIMING=1`` to get one line on stderr with the verification time.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # only for type checkers: importing these would read the stdlib early
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from importlib.machinery import ModuleSpec
    from types import CodeType, ModuleType

_T = TypeVar("_T")

FORMAT = 2
EXIT_TAMPERED = 3
TIMING_ENV = "SKYFLOW_LAUNCHER_TIMING"
HOST_COOKIE = ("VAULT_BACKEND_PLUGIN", "6669da05-b1c8-4f49-97d9-c8e5bed98e20")
IDENTITY_FIELDS = (
    "executable",
    "version",
    "prefix",
    "exec_prefix",
    "base_prefix",
    "base_exec_prefix",
    "path",
)
_CHUNK = 1 << 20
# Extension modules stay mapped for the life of the process, and so do their descriptors:
# the dynamic loader knows a library by its path, and a reused descriptor number would hand
# back the library loaded before it.
_KEEP_OPEN: list[int] = []


class IntegrityError(Exception):
    """A pinned file is missing or differs from what was installed."""


class NotPinned(ImportError):
    """A module file in a pinned directory that the manifest does not list, or whose pinned
    bytes no longer match."""


def interpreter_identity() -> dict[str, Any]:
    """What identifies the running interpreter: the fields :data:`IDENTITY_FIELDS` name."""
    return {
        "executable": sys.executable,
        "version": sys.version,
        "prefix": sys.prefix,
        "exec_prefix": sys.exec_prefix,
        "base_prefix": sys.base_prefix,
        "base_exec_prefix": sys.base_exec_prefix,
        "path": list(sys.path),
    }


def check_interpreter(expected: Mapping[str, Any]) -> None:
    """Compare the running interpreter with the one recorded at install time.

    Runs before anything is imported from the standard library's directories, so it uses
    only built-in and frozen modules.

    Raises:
        IntegrityError: naming what differs and the usual cause.
    """
    found = interpreter_identity()
    differing = [field for field in IDENTITY_FIELDS if found[field] != expected.get(field)]
    if not differing:
        return
    first = differing[0]
    if set(differing) <= {"executable", "version"}:
        cause = "the interpreter was replaced or upgraded"
    else:
        cause = (
            "a python3.X._pth file next to the interpreter, or a pyvenv.cfg there or in its "
            "parent directory, changes them; or the launcher was not started directly"
        )
    raise IntegrityError(
        f"the interpreter is not the one the plugin was installed with: sys.{first} is "
        f"{found[first]!r}, installed with {expected.get(first)!r}; differing: "
        f"{', '.join('sys.' + field for field in differing)} ({cause})"
    )


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


def read_file(path: str) -> bytes:
    """The whole content of a file, read through one descriptor (one read when it can)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        while True:  # grown since the fstat, or a short read
            more = os.pread(fd, _CHUNK, len(data))
            if not more:
                return data
            data += more
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
        dist_dirs: the ``*.dist-info`` directories that hold pinned files.
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
        self.dist_dirs: set[str] = set()
        # Extension modules as read and hashed by verify(), until they are imported: the
        # bytes loaded are the bytes checked, read once.
        self.native: dict[str, bytes] = {}
        for root_index, rel, digest, code in manifest["files"]:
            path = f"{self.roots[root_index]}/{rel}"
            self.files[path] = digest
            parent = path.rpartition("/")[0]
            if parent.endswith(".dist-info"):
                self.dist_dirs.add(parent)
            if code:
                offset, length, code_digest = code
                self.code[path] = (int(offset), int(length), str(code_digest))


def verify(pinned: Pinned, workers: int = 2) -> tuple[int, int, int]:
    """Hash every pinned file and the byte-code file.

    ``workers`` threads share the files, largest kinds first: reading and hashing release
    the GIL, so on a machine with a second core the check takes about half as long (it reads
    and hashes some 50 MB before the plugin may start). The first difference is reported in
    the manifest's order, whichever thread found it.

    Returns ``(files, bytes, fd)``: how much was checked, and a descriptor open on the
    byte-code file that was checked (modules are read from it, so replacing the file by a new
    install does not change what this process loads).

    Raises:
        IntegrityError: naming the first file that is missing or differs.
    """
    import hashlib
    import threading
    from importlib.machinery import EXTENSION_SUFFIXES

    native = tuple(EXTENSION_SUFFIXES)
    items = list(pinned.files.items())
    found: dict[str, tuple[str, int] | IntegrityError] = {}
    try:
        fd: int | None = os.open(pinned.bytecode, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    # The largest first (the byte-code file, then native libraries), so that they spread
    # over the workers.
    jobs = [pinned.bytecode] if fd is not None else []
    jobs += sorted((path for path, _ in items), key=lambda path: not path.endswith(native))
    queue = iter(jobs)

    def work() -> None:
        for path in queue:  # next() on a list iterator is atomic under the GIL
            try:
                if path == pinned.bytecode and fd is not None:
                    found[path] = _checked(lambda _: hash_fd(fd), path)
                elif path.endswith(native):
                    data = _checked(read_file, path)
                    found[path] = (hashlib.sha256(data).hexdigest(), len(data))
                    pinned.native[path] = data
                else:
                    found[path] = _checked(hash_file, path)
            except IntegrityError as exc:
                found[path] = exc

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(workers - 1)]
    for helper in helpers:
        helper.start()
    work()
    for helper in helpers:
        helper.join()
    try:
        count = size = 0
        for path, expected in items:
            digest, length = _result(found, path)
            if digest != expected:
                raise IntegrityError(
                    f"{path} changed since it was installed "
                    f"(sha256 {digest[:16]}..., installed {expected[:16]}...)"
                )
            count += 1
            size += length
        if fd is None:
            raise IntegrityError(f"{pinned.bytecode} is missing (install writes it)")
        digest, length = _result(found, pinned.bytecode)
        if digest != pinned.bytecode_sha256 or os.pread(fd, len(pinned.magic), 0) != pinned.magic:
            raise IntegrityError(f"{pinned.bytecode} changed since it was installed")
    except IntegrityError:
        if fd is not None:
            os.close(fd)
        raise
    return count + 1, size + length, fd


def _result(found: Mapping[str, tuple[str, int] | IntegrityError], path: str) -> tuple[str, int]:
    """What a worker of :func:`verify` found for ``path``: its hash and size, or its error."""
    result = found.get(path)
    if result is None:  # the worker died on something unexpected
        raise IntegrityError(f"{path} could not be checked")
    if isinstance(result, IntegrityError):
        raise result
    return result


def _checked(operation: Callable[[str], _T], path: str) -> _T:
    """``operation(path)``, with a missing or unreadable pinned file reported as such."""
    try:
        return operation(path)
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing (it was there at install time)") from None
    except OSError as exc:
        raise IntegrityError(f"{path} cannot be read: {exc.strerror}") from None


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def sealed_copy(name: str, data: bytes) -> str:
    """A path the dynamic loader can open that reads exactly ``data`` and cannot change.

    An anonymous memory file (``memfd``), sealed against writes, kept open for the life of
    the process. Where there is none, a file in a new directory only this process's user
    can enter (mode 0700).
    """
    import fcntl

    try:
        fd = os.memfd_create(f"skyflow-plugin:{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        import tempfile

        directory = tempfile.mkdtemp(prefix="skyflow-plugin-")
        path = f"{directory}/{name}"
        with open(path, "xb") as out:
            out.write(data)
        return path
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    fcntl.fcntl(
        fd,
        fcntl.F_ADD_SEALS,
        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL,
    )
    _KEEP_OPEN.append(fd)
    return f"/proc/self/fd/{fd}"


def install_import_hook(pinned: Pinned, bytecode_fd: int) -> None:
    """Load modules from the pinned directories only as the manifest says (see module doc)."""
    import _imp
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
    from types import CodeType

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
            path = self.path
            expected = pinned.files.get(path)
            if expected is None:
                raise refuse(path)
            # Load the bytes that were hashed: loading by path after checking it would let
            # the file be swapped in between.
            data = pinned.native.pop(path, None)
            if data is None:  # imported a second time, e.g. under another name
                data = read_file(path)
                if hashlib.sha256(data).hexdigest() != expected:
                    raise NotPinned(f"{path} changed since it was installed", path=path)
            copy = ModuleSpec(spec.name, self, origin=sealed_copy(path.rpartition("/")[2], data))
            module: ModuleType = _imp.create_dynamic(copy)
            module.__file__ = path
            return module

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


def limit_metadata(pinned: Pinned) -> None:
    """Make ``importlib.metadata`` see only the pinned distributions and their pinned files.

    ``importlib.metadata`` asks every finder on ``sys.meta_path`` for distributions; the
    standard ``PathFinder`` would list any ``*.dist-info`` directory on ``sys.path``. It is
    replaced by a subclass that keeps only the pinned directories and serves only pinned
    files, hashed as they are read.
    """
    import hashlib
    from importlib.machinery import PathFinder

    dist_dirs = frozenset(pinned.dist_dirs)

    class PinnedPathFinder(PathFinder):
        @classmethod
        def find_distributions(cls, *args: Any, **kwargs: Any) -> Iterator[Any]:
            from importlib.metadata import PathDistribution

            class PinnedDistribution(PathDistribution):
                def read_text(self, filename: str | os.PathLike[str]) -> str | None:
                    path = f"{self._path}/{os.fspath(filename)}"
                    expected = pinned.files.get(path)
                    if expected is None:
                        return None  # not pinned: as if it did not exist
                    data = read_file(path)
                    if hashlib.sha256(data).hexdigest() != expected:
                        raise NotPinned(f"{path} changed since it was installed", path=path)
                    return data.decode("utf-8")

            for dist in PathFinder.find_distributions(*args, **kwargs):
                where = getattr(dist, "_path", None)
                if where is not None and os.fspath(where) in dist_dirs:
                    yield PinnedDistribution(where)

    sys.meta_path[:] = [
        PinnedPathFinder if finder is PathFinder else finder for finder in sys.meta_path
    ]


def _under_host() -> bool:
    return os.environ.get(HOST_COOKIE[0]) == HOST_COOKIE[1]


def _json_string(text: str) -> str:
    """``text`` as a JSON string, without importing ``json`` (it may not be trusted yet)."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def report_refusal(reason: str) -> None:
    """Say why the plugin will not start, where the operator will look.

    Under a server: an hclog JSON line at level error on stderr (the server re-logs it at that
    level, so it shows at the default log level), and the reason as the first line of stdout,
    which go-plugin quotes in the error it returns ("Unrecognized remote plugin message:
    ..."). Always: the reason as plain text on stderr.
    """
    hint = "Re-run `skyflow-vault-plugin install` and register the sha256 it prints."
    message = f"skyflow-vault-plugin: refusing to start: {reason}"
    if _under_host():
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())  # hclog parses 6 digits
        sys.stderr.write(
            '{"@level":"error","@module":"skyflow-vault-plugin.launcher",'
            f'"@timestamp":{_json_string(stamp)},"@message":{_json_string(message)},'
            f'"fix":{_json_string(hint)}}}\n'
        )
        # go-plugin splits the handshake line on "|": keep the reason one field.
        sys.stdout.write(message.replace("|", "/").replace("\n", " ") + "\n")
        sys.stdout.flush()
    else:
        sys.stderr.write(f"{message}\n{hint}\n")
    sys.stderr.flush()


def run(manifest_text: str, interpreter: Mapping[str, Any] | None = None) -> int:
    """Verify, then run the entry point; the process exit status."""
    started = time.perf_counter()
    sys.dont_write_bytecode = True
    try:
        if interpreter is not None:
            check_interpreter(interpreter)
        import json
        from importlib.util import MAGIC_NUMBER

        pinned = Pinned(json.loads(manifest_text))
        if pinned.magic != MAGIC_NUMBER:
            raise IntegrityError(
                f"{sys.executable} is not the Python the plugin was installed with "
                "(its byte-code format differs)"
            )
        files, size, fd = verify(pinned)
    except IntegrityError as exc:
        report_refusal(str(exc))
        return EXIT_TAMPERED
    if os.environ.get(TIMING_ENV) == "1":
        elapsed = (time.perf_counter() - started) * 1000
        sys.stderr.write(
            f"skyflow-vault-plugin: verified {files} files ({size / 1e6:.1f} MB) "
            f"in {elapsed:.1f} ms\n"
        )
        sys.stderr.flush()
    install_import_hook(pinned, fd)
    limit_metadata(pinned)
    import importlib

    module_name, _, function = pinned.entry.partition(":")
    try:
        entry = getattr(importlib.import_module(module_name), function)
        return int(entry() or 0)
    except NotPinned as exc:
        report_refusal(str(exc).removeprefix("skyflow-vault-plugin: refusing to start: "))
        return EXIT_TAMPERED
