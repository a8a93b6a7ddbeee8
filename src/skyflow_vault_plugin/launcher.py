"""The file Vault/OpenBao runs: it verifies the code it is about to run, then runs it.

A host pins the sha256 of the one file it executes. For a Python plugin that file alone
proves little: the code it imports could change underneath it. ``skyflow-vault-plugin
install`` therefore writes a *launcher* made of four parts, all covered by the registered
sha256:

1. a shebang running the *real* interpreter (not the virtualenv's ``bin/python`` link)
   isolated: ``-I`` (no ``PYTHON*`` variables, no user site-packages, no script directory on
   ``sys.path``) and ``-S`` (no ``site`` module, so no ``.pth`` file runs). No file of the
   virtualenv is read before verification: not ``pyvenv.cfg``, not ``bin/python``;
2. this module (standard library only), compiled at install time, which is what runs, and
   its text, for the reader and for an interpreter of another byte-code format (which the
   text then refuses: step 1 below);
3. the identity of that interpreter as it started at install time (``sys.executable``,
   ``sys.version``, the prefixes and ``sys.path``);
4. a manifest: the sha256 of every file of the plugin package and of its runtime
   dependencies (the files their ``dist-info/RECORD`` lists), and of the byte-code compiled
   from each Python file at install time into one file next to the launcher.

When run, :func:`run`:

1. compares the interpreter with the recorded identity before importing anything that is
   not built in or frozen; a ``pyvenv.cfg`` or ``python3.X._pth`` planted next to the
   interpreter changes its prefixes or ``sys.path``, and the launcher refuses to start;
2. starts the *whole-manifest check* (:class:`Check`) in a child process forked for it: it
   hashes every file in the manifest, the native libraries first (copying each into the
   sealed memory file the import hook will load), and on any difference names the first
   differing file in manifest order and ends the process with status 3, whatever the main
   thread is doing at that moment. (Where no process can be forked, threads of this process
   run the check, before the imports: alongside them they would slow them down about as much
   as they save);
3. puts :class:`StdoutGate` in place of ``sys.stdout``: its first write or flush waits for
   the check. **Nothing reaches the host before the check passes**: the go-plugin handshake
   line, by which the host learns that the plugin is up, goes to stdout; if the check fails
   the process ends before anything was written there but the refusal;
4. meanwhile puts only the manifest's directories after the standard library on
   ``sys.path``, and installs an import hook for those directories: only manifest files
   load. Python modules run from the pinned byte-code, each module's code hashed as it is
   loaded; an extension module is loaded from the check's sealed in-memory copy, made from
   bytes whose sha256 was checked (the file is read once; an import that comes before the
   check got there waits for it; swapping the file afterwards changes nothing). Nothing is
   loaded from ``__pycache__``, whose files nobody pins. So what *runs* is verified as it
   loads, while the check covers the rest (files that are never imported, data files)
   before the host hears from the plugin;
5. limits ``importlib.metadata`` to the pinned distributions, and to their pinned files: a
   planted ``*.dist-info`` (entry points, which OpenTelemetry reads) is invisible;
6. runs the entry point, ``skyflow_vault_plugin.cli:main``, alongside the check. If the entry
   point returns or fails without writing to stdout, the launcher still waits for the check
   and refuses (status 3) when it failed.

The interpreter binary, its standard library and the operating system's libraries are
outside the manifest: they belong to the operating system (or the Python build). Their
directories must be writable only by root (docs/operations.md).

When the launcher refuses to start under a server (the go-plugin magic cookie is set), it
says why three times: an hclog JSON line at level ``error`` on stderr (the server logs it at
its default level), the same as plain text for people, and one line on stdout, which the
server quotes in the error the failed ``secrets enable`` or ``plugin reload`` returns. It
says it once, whether the check failed or the import hook refused a file, and exits with
status 3.

Set ``SKYFLOW_LAUNCHER_TIMING=1`` to get one line on stderr with the check's time (from the
launcher's start to the check's end), how long stdout waited for it, and how long the imports
waited for its copies of native libraries.
"""

from __future__ import annotations

import _thread
import gc
import os
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:  # only for type checkers: importing these would read the stdlib early
    import threading
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from importlib.machinery import ModuleSpec
    from types import CodeType, ModuleType
    from typing import TextIO

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
        native: sealed copies of extension modules that the :class:`Check` made (and that
            matched), until the import hook takes them (:meth:`load_native`) or the check has
            passed and stdout opened (:meth:`drop_native`).
        native_waited: seconds the imports spent waiting for those copies (reported with
            ``SKYFLOW_LAUNCHER_TIMING=1``).
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
        # Each extension module is read once, by the check, into the copy the import hook
        # loads; an import that comes first waits for it (see load_native).
        self.native: dict[str, SealedCopy] = {}
        self._native_ready: dict[str, threading.Event] = {}
        self._native_lock = _thread.allocate_lock()
        self._native_dropped = False
        self.native_waited = 0.0
        for root_index, rel, digest, code in manifest["files"]:
            path = f"{self.roots[root_index]}/{rel}"
            self.files[path] = digest
            parent = path.rpartition("/")[0]
            if parent.endswith(".dist-info"):
                self.dist_dirs.add(parent)
            if code:
                offset, length, code_digest = code
                self.code[path] = (int(offset), int(length), str(code_digest))

    def expect_native(self, paths: Iterable[str]) -> None:
        """For the check, before it starts: it will provide a copy of each of ``paths``."""
        import threading

        for path in paths:
            self._native_ready[path] = threading.Event()

    def provide_native(self, path: str, copy: SealedCopy | None) -> None:
        """For the check: its copy of ``path`` (``None`` when it could not make one), kept
        for the import hook when it matches the manifest, freed otherwise."""
        if copy is not None:
            with self._native_lock:
                keep = not self._native_dropped and copy.sha256 == self.files.get(path)
                if keep:
                    self.native[path] = copy
            if not keep:
                copy.discard()
        ready = self._native_ready.get(path)
        if ready is not None:
            ready.set()

    def load_native(self, path: str) -> str:
        """For the import hook: the path of a sealed copy of a pinned extension module, whose
        sha256 matched.

        While the check runs, the copy it made (waiting for it if it has not got there yet):
        handed over, so the library is read once and never held twice. Otherwise (imported
        again, or after the check) a copy made and hashed now.

        Raises:
            NotPinned: the file differs from what was installed.
        """
        ready = self._native_ready.get(path)
        if ready is not None and not ready.is_set():
            began = time.perf_counter()
            ready.wait()
            self.native_waited += time.perf_counter() - began
        with self._native_lock:
            copy = self.native.pop(path, None)
        if copy is None:
            copy = SealedCopy(path)
            if copy.sha256 != self.files.get(path):
                copy.discard()
                raise NotPinned(f"{path} changed since it was installed", path=path)
        return copy.keep()

    def drop_native(self) -> None:
        """Free the copies made for imports that have not come; later imports copy again.

        Called once the check has passed and stdout opened: the libraries loaded before the
        handshake were read once, and no unused copy stays for the life of the process.
        """
        with self._native_lock:
            self._native_dropped = True
            copies = list(self.native.values())
            self.native.clear()
        for copy in copies:
            copy.discard()


class Check:
    """The whole-manifest check: hash every pinned file and the byte-code file, alongside
    whatever the main thread does (:func:`run`: the imports).

    The native libraries go first, smallest first: each is read once into the
    :class:`SealedCopy` that the import hook will load (:meth:`Pinned.provide_native`; an
    import that comes first waits for it). Shortest first keeps the total wait of the
    imports least: a small library (protobuf's, imported first) is never held up behind the
    large ones (uvloop's and cryptography's, 14 MB each, imported later). Then the byte-code
    file and every other file in manifest order.

    With ``separate_process`` (the default), a child process forked before anything else
    starts does all of it: on a thread of this process the work would compete with the
    imports for the GIL (reading a small file takes several system calls, each giving the
    GIL up and waiting to take it back) and slow them down about as much as it saves. The
    memory files of the copies are made here before the fork, and the child fills and seals
    them; it reports each library as it is done and then its verdict through a pipe, which a
    daemon thread here reads. The child never writes to the host's stdout or stderr and
    exits once it has sent its verdict. Where no process (or memory file) can be made, or
    without ``separate_process``, ``workers`` daemon threads of this process do the work.

    The first difference is reported in the manifest's order (the byte-code file last),
    whichever thread or process found it. When everything is done, the result is in
    :attr:`error` (``None`` when every file matched), :attr:`files` and :attr:`size`, and
    :attr:`done` is set. A failure is first handed to ``on_failure``, on the thread that
    concluded: :func:`run` reports it and ends the process there, so that a failed check stops
    the plugin even in the middle of its imports.

    ``delays`` holds the check back: the seconds its threads or its child wait before the
    native libraries, and before the other files. Only for tests, which need a check slower
    than the imports (an import waits for its native library, the rest does not); the
    installed launcher never sets them.
    """

    def __init__(
        self,
        pinned: Pinned,
        bytecode_fd: int | None,
        *,
        workers: int = 2,
        separate_process: bool = True,
        delays: tuple[float, float] = (0.0, 0.0),
        on_failure: Callable[[IntegrityError], object] | None = None,
    ) -> None:
        # Imported here, on the calling thread: the check's threads import nothing while the
        # main thread may be holding import locks.
        import fcntl  # noqa: F401 -- SealedCopy's
        import hashlib  # noqa: F401 -- hash_fd's and SealedCopy's
        import json  # noqa: F401 -- the child's reports
        import threading
        from importlib.machinery import EXTENSION_SUFFIXES

        self.pinned = pinned
        self.bytecode_fd = bytecode_fd
        self.workers = max(1, workers)
        self.separate_process = separate_process
        self.delays = delays
        self.on_failure = on_failure
        self.done = threading.Event()
        self.error: IntegrityError | None = None
        self.files = self.size = 0
        self.finished = 0.0  # time.perf_counter() when it ended
        suffixes = tuple(EXTENSION_SUFFIXES)
        native = [path for path in pinned.files if path.endswith(suffixes)]
        self._natives = sorted(native, key=_size)
        native_set = set(native)  # once: not per file of the manifest
        self._others = [pinned.bytecode, *(p for p in pinned.files if p not in native_set)]
        self._found: dict[str, tuple[str, int] | IntegrityError] = {}
        self._queue: Iterator[str] = iter(())
        self._lock = _thread.allocate_lock()
        self._running = 0
        self._threads: list[threading.Thread] = []
        self.in_child = False  # whether a child process does the work (set by start)

    def start(self) -> None:
        """Fork the child (when asked and possible), else start the threads; returns at
        once."""
        import threading

        self.pinned.expect_native(self._natives)
        if self.separate_process:
            copies = _memory_files(self._natives)
            child = self._fork(copies) if copies is not None else None
            if child is not None:
                reader = threading.Thread(
                    target=self._follow_child, args=(*child, copies), daemon=True
                )
                reader.name = "launcher-check"
                self._threads = [reader]
                self.in_child = True
                reader.start()
                return
            for fd in copies or ():
                os.close(fd)
        self._queue = iter([*self._natives, *self._others])
        self._running = self.workers
        self._threads = [
            threading.Thread(target=self._work, name=f"launcher-check-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def wait(self) -> tuple[int, int]:
        """Wait for the check; ``(files, bytes)`` checked.

        With ``on_failure`` set, returns only when every file matched (a failure never sets
        :attr:`done`: ``on_failure`` ends the process first).

        Raises:
            IntegrityError: naming the first file that is missing or differs.
        """
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.files, self.size

    # -- on threads of this process --

    def _hash(self, path: str) -> tuple[str, int] | IntegrityError:
        fd = self.bytecode_fd
        try:
            if path == self.pinned.bytecode:
                if fd is None:
                    raise IntegrityError(f"{path} is missing (install writes it)")
                return _checked(lambda _: hash_fd(fd), path)
            return _checked(hash_file, path)
        except IntegrityError as exc:
            return exc

    def _copy(self, path: str) -> tuple[str, int] | IntegrityError:
        copy = None
        try:
            copy = _checked(SealedCopy, path)
            return copy.sha256, copy.size
        except IntegrityError as exc:
            return exc
        finally:
            self.pinned.provide_native(path, copy)

    def _work(self) -> None:
        try:
            _pause(self.delays[0])
            natives, paused = set(self._natives), False
            for path in self._queue:  # next() on a list iterator is atomic under the GIL
                if path in natives:
                    self._found[path] = self._copy(path)
                    continue
                if not paused:
                    paused = _pause(self.delays[1])
                self._found[path] = self._hash(path)
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._conclude(lambda: _tally(self.pinned, self._found, self.bytecode_fd))

    # -- with a child process --

    def _fork(self, copies: list[int]) -> tuple[int, int] | None:
        """Start the child; ``(pid, read end of its reports)``, ``None`` when no process can
        be forked."""
        try:
            reports, out = os.pipe()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            os.close(reports)
            os.close(out)
            return None
        if pid == 0:  # the child: nothing here returns
            os.close(reports)
            self._child_main(copies, out)
        os.close(out)
        return pid, reports

    def _child_main(self, copies: list[int], out: int) -> NoReturn:
        """Fill and seal the copies of the native libraries, reporting each as
        ``["native", i, sha256, size]`` (``["native", i, None, reason]`` when it cannot be
        read), then hash everything else; report ``["verdict", files, bytes, index, reason]``
        as :func:`_tally` has it, and exit. One JSON list per line."""
        status = 1
        try:
            import json
            import signal

            # Ctrl-C on the host's terminal reaches the whole process group; the host decides.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # stdout is how the host learns the plugin is up: the child keeps none of it.
            null = os.open(os.devnull, os.O_RDWR)
            for stream in (0, 1, 2):
                os.dup2(null, stream)

            def report(*record: object) -> None:
                view = memoryview(json.dumps(record).encode() + b"\n")
                while view:
                    view = view[os.write(out, view) :]

            _pause(self.delays[0])
            for index, (path, copy) in enumerate(zip(self._natives, copies, strict=True)):
                try:
                    found = self._found[path] = _checked(_filling(copy), path)
                    report("native", index, *found)
                except IntegrityError as exc:
                    self._found[path] = exc
                    report("native", index, None, str(exc))
            _pause(self.delays[1])
            for path in self._others:
                self._found[path] = self._hash(path)
            report("verdict", *_tally(self.pinned, self._found, self.bytecode_fd))
            status = 0
        finally:
            os._exit(status)

    def _follow_child(self, pid: int, reports: int, copies: list[int]) -> None:
        """Hand each library's copy to the import hook as the child reports it, then
        conclude with the child's verdict."""
        import json

        verdict: list[Any] | None = None
        provided: set[int] = set()
        try:
            pending = b""
            while chunk := os.read(reports, 1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    record = json.loads(line)
                    if record[0] == "verdict":
                        verdict = record[1:]
                        continue
                    _, index, digest, size_or_reason = record
                    path, fd = self._natives[index], copies[index]
                    provided.add(index)
                    copy = SealedCopy.adopt(fd, path, digest, size_or_reason) if digest else None
                    if copy is None:
                        os.close(fd)
                    self.pinned.provide_native(path, copy)
        except Exception:  # a report that cannot be read: fail, as without a verdict
            verdict = None
        finally:
            os.close(reports)
            for index, path in enumerate(self._natives):  # the child ended before them
                if index not in provided:
                    os.close(copies[index])
                    self.pinned.provide_native(path, None)
            self._conclude(lambda: _child_verdict(pid, verdict))

    # -- the end --

    def _conclude(self, verdict: Callable[[], tuple[int, int, int, str | None]]) -> None:
        try:
            self.files, self.size, _, reason = verdict()
            self.error = IntegrityError(reason) if reason is not None else None
        except Exception as exc:  # a bug in the check must not look like a pass
            self.error = IntegrityError(f"the check could not complete: {exc!r}")
        self.finished = time.perf_counter()
        if self.error is not None and self.on_failure is not None:
            self.on_failure(self.error)
        self.done.set()


def _pause(seconds: float) -> bool:
    """Sleep (for tests, see :class:`Check`); ``True``."""
    if seconds:
        time.sleep(seconds)
    return True


def _tally(
    pinned: Pinned, found: Mapping[str, tuple[str, int] | IntegrityError], fd: int | None
) -> tuple[int, int, int, str | None]:
    """Compare what was found with the manifest, in its order (the byte-code file, open as
    ``fd``, last): ``(files, bytes, -1, None)`` when all match, else the index of the first
    difference in that order and the reason that names it."""
    count = size = 0
    entries = [*pinned.files.items(), (pinned.bytecode, pinned.bytecode_sha256)]
    for index, (path, expected) in enumerate(entries):
        result = found.get(path)
        if result is None:  # a thread died on something unexpected
            return count, size, index, f"{path} could not be checked"
        if isinstance(result, IntegrityError):
            return count, size, index, str(result)
        digest, length = result
        if path == pinned.bytecode:
            magic = os.pread(fd, len(pinned.magic), 0) if fd is not None else b""
            if digest != expected or magic != pinned.magic:
                return count, size, index, f"{path} changed since it was installed"
        elif digest != expected:
            reason = (
                f"{path} changed since it was installed "
                f"(sha256 {digest[:16]}..., installed {expected[:16]}...)"
            )
            return count, size, index, reason
        count += 1
        size += length
    return count, size, -1, None


def _child_verdict(pid: int, verdict: list[Any] | None) -> tuple[int, int, int, str | None]:
    """Reap the child; its verdict, if it gave one and exited cleanly."""
    try:
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:  # reaped already (SIGCHLD ignored): the verdict tells
        status = 0
    if status != 0 or verdict is None:
        raise IntegrityError(f"the check's process ended without a verdict (exit status {status})")
    files, size, index, reason = verdict
    return int(files), int(size), int(index), None if reason is None else str(reason)


def _memory_files(paths: Sequence[str]) -> list[int] | None:
    """An empty memory file (``memfd``, sealable) for each of ``paths``; ``None`` where there
    are none."""
    made: list[int] = []
    try:
        for path in paths:
            name = f"skyflow-plugin:{path.rpartition('/')[2]}"
            made.append(os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING))
    except (AttributeError, OSError):
        for fd in made:
            os.close(fd)
        return None
    return made


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # the check reports it


def open_bytecode(pinned: Pinned) -> int | None:
    """A descriptor open on the pinned byte-code file, ``None`` when it is missing.

    Modules are read from it, so replacing the file by a new install does not change what this
    process loads; the check hashes the file through it.
    """
    try:
        return os.open(pinned.bytecode, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def verify(
    pinned: Pinned, workers: int = 2, *, separate_process: bool = False
) -> tuple[int, int, int]:
    """Run the whole-manifest :class:`Check` and wait for it (on ``workers`` threads, or in a
    child process with ``separate_process``).

    Returns ``(files, bytes, fd)``: how much was checked, and a descriptor open on the
    byte-code file that was checked (see :func:`open_bytecode`).

    Raises:
        IntegrityError: naming the first file that is missing or differs.
    """
    fd = open_bytecode(pinned)
    check = Check(pinned, fd, workers=workers, separate_process=separate_process)
    check.start()
    try:
        files, size = check.wait()
    except IntegrityError:
        if fd is not None:
            os.close(fd)
        raise
    assert fd is not None  # the check fails without it
    return files, size, fd


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


_SEALS = ("F_SEAL_WRITE", "F_SEAL_GROW", "F_SEAL_SHRINK", "F_SEAL_SEAL")


def _all_seals() -> int:
    """The seals a copy gets (:func:`_fill`) and must have to be loaded (``adopt``)."""
    import fcntl

    seals = 0
    for name in _SEALS:
        seals |= getattr(fcntl, name)
    return seals


class SealedCopy:
    """A copy of a file that the dynamic loader can open and nobody can change, and the
    sha256 of exactly the bytes it holds.

    An anonymous memory file (``memfd``), sealed against writes. Where there is none, a file
    in a new directory only this process's user can enter (mode 0700). The file is read once,
    a chunk at a time, each chunk hashed and written to the copy: no copy of a large library
    is held in Python.

    Attributes:
        origin: the path to load it from (``/proc/self/fd/N`` for a memfd).
        sha256: hex sha256 of the copy's content; ``size`` its length.
    """

    def __init__(self, path: str) -> None:
        self._fd: int | None = None  # the memfd, until kept or discarded
        self._dir: str | None = None  # the fallback's directory
        made = _memory_files([path])
        try:
            if made is not None:
                (self._fd,) = made
                self.origin = f"/proc/self/fd/{self._fd}"
                self.sha256, self.size = _fill(self._fd, path)
            else:
                import tempfile

                self._dir = tempfile.mkdtemp(prefix="skyflow-plugin-")
                self.origin = f"{self._dir}/{path.rpartition('/')[2]}"
                target = os.open(self.origin, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    self.sha256, self.size = _copy_hashed(path, target)
                finally:
                    os.close(target)
        except BaseException:
            self.discard()
            raise

    @classmethod
    def adopt(cls, fd: int, path: str, sha256: str, size: int) -> SealedCopy | None:
        """The memory file ``fd`` that the check's child process filled from ``path`` and
        sealed, with the sha256 and size it reported; ``None`` when it is not sealed."""
        import fcntl

        seals = _all_seals()
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & seals != seals:
            return None
        copy = cls.__new__(cls)
        copy._fd, copy._dir = fd, None
        copy.origin = f"/proc/self/fd/{fd}"
        copy.sha256, copy.size = str(sha256), int(size)
        return copy

    def keep(self) -> str:
        """The path to load; a memfd stays open for the life of the process (``_KEEP_OPEN``)."""
        if self._fd is not None:
            _KEEP_OPEN.append(self._fd)
            self._fd = None
        return self.origin

    def __del__(self) -> None:  # neither kept nor discarded, e.g. by a test of verify()
        self.discard()

    def discard(self) -> None:
        """Free a copy that will not be loaded."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._dir is not None:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _fill(memfd: int, path: str) -> tuple[str, int]:
    """Copy the file ``path`` into the empty memory file ``memfd`` and seal it against any
    change; ``(hex sha256, size)`` of what it holds."""
    import fcntl

    found = _copy_hashed(path, memfd)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _all_seals())
    return found


def _filling(memfd: int) -> Callable[[str], tuple[str, int]]:
    """:func:`_fill` into ``memfd``, as an operation on a path for :func:`_checked`."""
    return lambda path: _fill(memfd, path)


def _copy_hashed(path: str, target: int) -> tuple[str, int]:
    """Copy the file ``path`` to the descriptor ``target``; ``(hex sha256, size)`` of what
    was copied.

    Through one reused buffer, a megabyte at a time: reading, hashing and writing each
    release the GIL, and no allocation as large as the library is made.
    """
    import hashlib

    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    size = 0
    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            count = os.preadv(source, [buffer], size)
            if not count:
                return digest.hexdigest(), size
            chunk = memoryview(buffer)[:count]
            digest.update(chunk)
            while chunk:
                chunk = chunk[os.write(target, chunk) :]
            size += count
    finally:
        os.close(source)


def install_import_hook(pinned: Pinned, bytecode_fd: int) -> None:
    """Load modules from the pinned directories only as the manifest says (see module doc).

    Safe to install while the :class:`Check` is running: each module's byte-code is hashed as
    it is read from ``bytecode_fd``, and an extension module is loaded from the copy the check
    made of it, waiting for it if need be (:meth:`Pinned.load_native`).
    """
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
            copy = ModuleSpec(spec.name, self, origin=pinned.load_native(path))
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


def report_refusal(reason: str, stdout: TextIO | None = None) -> None:
    """Say why the plugin will not start, where the operator will look.

    Under a server: an hclog JSON line at level error on stderr (the server re-logs it at that
    level, so it shows at the default log level), and the reason as the first line of stdout
    (``stdout``, default ``sys.stdout``: :func:`run` passes the real one, not its gate),
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
        out = sys.stdout if stdout is None else stdout
        out.write(message.replace("|", "/").replace("\n", " ") + "\n")
        out.flush()
    else:
        sys.stderr.write(f"{message}\n{hint}\n")
    sys.stderr.flush()


class StdoutGate:
    """Stands for ``sys.stdout`` (and ``sys.__stdout__``) until the :class:`Check` has passed.

    Nothing reaches the host before the check passes: a go-plugin host learns that the plugin
    is up from its handshake line on stdout, and the plugin writes it through
    ``sys.stdout``. The gate's first write or flush, or any use that could lead to writing
    (``buffer``, ``fileno()``, ...), waits for the check: when it passed, ``opened`` is called
    once (it puts the real stream back) and the call goes through; when it failed, the check's
    thread has reported it and ends the process, so the call never returns. Attributes that
    only describe the stream (``encoding``, ``isatty()``, ...) do not wait.

    Generic for any entry point that writes through ``sys.stdout``; writing to descriptor 1
    directly is not gated.
    """

    _DESCRIBE = frozenset(
        {"encoding", "errors", "newlines", "line_buffering", "write_through", "name", "mode"}
        | {"closed", "isatty", "readable", "writable", "seekable"}
    )

    def __init__(
        self, stream: TextIO, check: Check, opened: Callable[[float], object] | None = None
    ) -> None:
        self.stream = stream
        self.check = check
        self._opened = opened
        self._open = False
        self._lock = _thread.allocate_lock()

    def open(self) -> TextIO:
        """Wait for the check to pass (see the class doc); the real stream."""
        if not self._open:
            with self._lock:  # one thread waits and calls opened; the others wait for it
                if not self._open:
                    waiting = time.perf_counter()
                    self.check.wait()
                    if self._opened is not None:
                        self._opened(time.perf_counter() - waiting)
                    self._open = True
        return self.stream

    def write(self, text: str) -> int:
        """Write ``text`` once the check has passed."""
        return self.open().write(text)

    def writelines(self, lines: Iterator[str]) -> None:
        """Write ``lines`` once the check has passed."""
        self.open().writelines(lines)

    def flush(self) -> None:
        """Flush once the check has passed."""
        self.open().flush()

    def __getattr__(self, name: str) -> Any:
        if name in self._DESCRIBE:
            return getattr(self.stream, name)
        return getattr(self.open(), name)


def run(
    manifest_text: str,
    interpreter: Mapping[str, Any] | None = None,
    *,
    workers: int = 2,
    separate_process: bool = True,
    check_delays: tuple[float, float] = (0.0, 0.0),
) -> int:
    """Check the interpreter, start the whole-manifest check, run the entry point alongside
    it; the process exit status (see the module doc).

    ``workers``, ``separate_process`` and ``check_delays`` go to :class:`Check` (``delays``).
    ``check_delays`` holds the check back: only tests set it, to show what happens when the
    check ends after the imports. The launcher ``install`` writes passes none of them.
    """
    started = time.perf_counter()
    sys.dont_write_bytecode = True
    # The cyclic garbage collector waits for the handshake (stdout opening, below): the
    # imports make objects that nearly all live on, and looking for cycles among them is
    # wasted work, about 1% of the instructions up to the handshake (valgrind's callgrind).
    # They are frozen then, not collected (see ``opened``).
    gc.disable()
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
    except IntegrityError as exc:
        report_refusal(str(exc))
        return EXIT_TAMPERED

    stdout = sys.stdout
    refusing = _thread.allocate_lock()

    def refuse(reason: str) -> NoReturn:
        """Report once, whichever thread comes first (the check's or the main one), and end
        the process with status 3; a second refusal waits for the first to end it."""
        if refusing.acquire(blocking=False):
            try:
                report_refusal(reason, stdout)
            finally:
                os._exit(EXIT_TAMPERED)
        refusing.acquire()
        os._exit(EXIT_TAMPERED)

    fd = open_bytecode(pinned)
    checking = Check(
        pinned,
        fd,
        workers=workers,
        separate_process=separate_process,
        delays=check_delays,
        on_failure=lambda exc: refuse(str(exc)),
    )
    checking.start()
    if fd is None or not checking.in_child:
        # Without the byte-code file nothing can be imported: the check fails and names
        # what is wrong. Without a child process, the check's threads would slow the
        # imports about as much as they save: the check runs first.
        checking.wait()
    if fd is None:
        refuse(f"{pinned.bytecode} is missing (install writes it)")
    timing = os.environ.get(TIMING_ENV) == "1"

    def opened(waited: float) -> None:
        # The check passed: the real stream from now on, and no copy of a library kept for
        # an import that may never come.
        if sys.stdout is gate:
            sys.stdout = stdout
        if getattr(sys, "__stdout__", None) is gate:
            setattr(sys, "__stdout__", stdout)  # noqa: B010 -- typeshed calls it final
        # Enabled as it was, the collector would look at every object the start made on the
        # next allocation, before the handshake line leaves: about 8 ms. Frozen, they are
        # left out of every collection for the life of the process, which their being
        # nearly all alive for that long makes right (the few hundred that are garbage,
        # about 100 KB, stay).
        gc.freeze()
        gc.enable()
        pinned.drop_native()
        if timing:
            elapsed = (checking.finished - started) * 1000
            sys.stderr.write(
                f"skyflow-vault-plugin: verified {checking.files} files "
                f"({checking.size / 1e6:.1f} MB) in {elapsed:.1f} ms, alongside the imports; "
                f"stdout waited {waited * 1000:.1f} ms for it, the imports "
                f"{pinned.native_waited * 1000:.1f} ms for its copies of native libraries\n"
            )
            sys.stderr.flush()

    gate = StdoutGate(stdout, checking, opened)
    sys.stdout = gate  # a stand-in: see its doc
    setattr(sys, "__stdout__", gate)  # noqa: B010 -- typeshed calls it final
    install_import_hook(pinned, fd)
    limit_metadata(pinned)
    import importlib

    module_name, _, function = pinned.entry.partition(":")
    try:
        entry = getattr(importlib.import_module(module_name), function)
        return int(entry() or 0)
    except NotPinned as exc:
        # A failed check names the first difference in manifest order: it reports (and
        # exits) instead, if it fails.
        checking.wait()
        refuse(str(exc).removeprefix("skyflow-vault-plugin: refusing to start: "))
    finally:
        # Returned or failed, maybe without writing to stdout: not before the check passed.
        gate.open()
