"""Install the plugin into a Vault/OpenBao plugin directory, with a checksum that means something.

The host pins the sha256 of the one file it runs. :func:`install` writes that file as a
*launcher* (see :mod:`skyflow_vault_plugin.launcher`) which embeds the sha256 of every file
the plugin can import: the ``skyflow_vault_plugin`` and ``vault_plugin_sdk`` packages, the
installed files of its runtime dependencies (their ``dist-info/RECORD``), and byte-code
compiled from them now (the SDK's test helpers, ``vault_plugin_sdk.testing``, excepted). The
launcher checks them all before importing any of them, so the registered sha256 covers the
code that runs, not only the launcher.

Files written into the plugin directory ``DIR`` for ``--name NAME``:

* ``DIR/NAME`` -- the launcher, mode 0755 (the file to register);
* ``DIR/.NAME.bytecode`` -- the byte-code of every pinned Python file, compiled at install
  time; the launcher runs this, never ``__pycache__``.

Nothing is copied out of the virtualenv: the launcher runs the interpreter the virtualenv was
made from (the binary itself, so that no file of the virtualenv is read before verification)
with the virtualenv's pinned directories on ``sys.path``. The virtualenv must stay where it
is (on every node of a cluster, at the same path), and the runtime dependencies should come
from ``requirements.lock`` so that every node pins the same bytes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import marshal
import os
import re
import secrets
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import MAGIC_NUMBER
from pathlib import Path

from . import launcher

__all__ = [
    "DEFAULT_NAME",
    "InstallError",
    "Installation",
    "StartupFailed",
    "StartupSample",
    "build_manifest",
    "fake_host_environment",
    "install",
    "measure_startup",
    "render_launcher",
    "runtime_distributions",
]

DEFAULT_NAME = "skyflow"
DIST_NAME = "skyflow-vault-plugin"
PACKAGE_DIR = Path(__file__).resolve().parent
# The SDK the engine runs on: a top-level package of its own, in this distribution's wheel.
SDK_PACKAGE = "vault_plugin_sdk"
# Test helpers plugin authors use in their own tests: never run by the plugin, never pinned
# (an import of them from the launcher fails as "not pinned").
_UNPINNED_PACKAGES = ("vault_plugin_sdk/testing/",)
ENTRY_POINT = "skyflow_vault_plugin.cli:main"
BYTECODE_FILE = ".{name}.bytecode"
# Never imported or read by the plugin (type stubs, C sources), or rewritten by installers
# depending on how a package was installed (RECORD and friends): pinning them would only make
# launchers differ between nodes that run the same code.
_UNPINNED_SUFFIXES = (".pyi", ".pyx", ".pxd", ".pxi", ".h", ".c", ".cpp", ".typed")
_UNPINNED_METADATA = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MARSHAL_VERSION = 2
_MAX_SHEBANG = 200  # Linux reads at most 255 bytes of "#!..." (older kernels: 127)


class InstallError(Exception):
    """The plugin cannot be installed as asked; the message says what to fix."""


# -- what to pin ------------------------------------------------------------------------------


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
class _File:
    root_index: int
    rel: str
    path: Path


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
) -> tuple[list[str], list[_File]]:
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
    files: dict[str, _File] = {}

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
        files.setdefault(f"{root}/{rel}", _File(roots.index(root), rel, path))

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
            if recorded is not None and _sha256(path.read_bytes()) != recorded:
                raise InstallError(
                    f"{path} does not match the sha256 in {dist.metadata['Name']}'s RECORD: "
                    "the virtualenv changed after pip installed it; reinstall that package"
                )
            add(str(base), path)
    return roots, sorted(files.values(), key=lambda f: (f.root_index, f.rel))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.chmod(mode)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _compile(path: Path, source: bytes) -> bytes | None:
    """The marshalled code of a Python file, or ``None`` if it does not compile here."""
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None  # e.g. a file for another Python; the launcher compiles it if ever imported
    # Version 2 has no back-references: versions 3+ mark objects by their reference count,
    # which depends on whatever else the installing process has loaded, so the same code
    # would give different bytes (and a different sha256) from one install to the next.
    return marshal.dumps(code, _MARSHAL_VERSION)


def build_manifest(
    roots: Sequence[str], files: Sequence[_File], bytecode_file: Path
) -> tuple[str, int, int]:
    """Write the byte-code file and return ``(manifest JSON, files pinned, bytes pinned)``.

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
                code = [len(blob), len(marshalled), _sha256(marshalled)]
                blob += marshalled
        entries.append([item.root_index, item.rel, _sha256(data), code])
    content = bytes(blob)
    _write_atomic(bytecode_file, content, 0o644)
    manifest = {
        "format": launcher.FORMAT,
        "entry": ENTRY_POINT,
        "magic": MAGIC_NUMBER.hex(),
        "path": list(roots),
        "bytecode": {"file": str(bytecode_file), "sha256": _sha256(content)},
        "files": entries,
    }
    return json.dumps(manifest, separators=(",", ":")), len(files) + 1, total + len(content)


def real_interpreter(python: str | None = None) -> str:
    """The interpreter binary itself, never a virtualenv's ``bin/python`` link.

    Defaults to the interpreter the current virtualenv was made from. Running that binary
    directly, the launcher reads no file of the virtualenv (``pyvenv.cfg``, links in
    ``bin/``) before it has verified what it pinned.
    """
    candidate = python or getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(candidate)


def interpreter_identity(python: str) -> dict[str, object]:
    """What ``python -IS`` reports about itself; the launcher compares it at every start.

    Raises:
        InstallError: it does not run, is itself inside a virtualenv, or writes byte-code
            this Python cannot (another version).
    """
    body = Path(launcher.__file__).read_text(encoding="utf-8")
    probe = (
        f"{body}\n"
        "import json\n"
        "from importlib.util import MAGIC_NUMBER\n"
        "print(json.dumps({'identity': interpreter_identity(), 'magic': MAGIC_NUMBER.hex()}))\n"
    )
    try:
        done = subprocess.run(
            [python, "-IS", "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={},
        )
        reported = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise InstallError(f"cannot run {python} -IS: {exc}") from None
    identity: dict[str, object] = reported["identity"]
    if identity["prefix"] != identity["base_prefix"]:
        raise InstallError(
            f"{python} runs inside a virtualenv ({identity['prefix']}); give the interpreter "
            "the virtualenv was made from"
        )
    if reported["magic"] != MAGIC_NUMBER.hex():
        raise InstallError(
            f"{python} is another Python version than the one running this install "
            f"({sys.version.split()[0]}); run the install with the virtualenv's own Python"
        )
    return identity


def render_launcher(
    manifest_json: str, python: str, identity: Mapping[str, object] | None = None
) -> bytes:
    """The launcher file: shebang, the launcher module's text, the interpreter's identity,
    the manifest, the call."""
    if not os.path.isabs(python) or re.search(r"\s", python):
        raise InstallError(f"the interpreter path must be absolute without blanks: {python!r}")
    shebang = f"#!{python} -IS"
    if len(shebang) > _MAX_SHEBANG:
        raise InstallError(
            f"the interpreter path is too long for a shebang ({len(python)} characters); "
            "install Python at a shorter path"
        )
    body = Path(launcher.__file__).read_text(encoding="utf-8")
    return (
        f"{shebang}\n"
        "# skyflow-vault-plugin launcher, written by `skyflow-vault-plugin install`.\n"
        "# Register this file's sha256; it pins every file the plugin imports. Do not edit.\n"
        f"{body}\n\n"
        f"INTERPRETER = {dict(identity) if identity is not None else None!r}\n"
        f"MANIFEST = {manifest_json!r}\n\n"
        'if __name__ == "__main__":\n'
        "    sys.exit(run(MANIFEST, INTERPRETER))\n"
    ).encode()


# -- install ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installation:
    """What :func:`install` wrote, and the commands that register and mount it.

    Attributes:
        name: the catalog name.
        path: the launcher in the plugin directory.
        sha256: hex sha256 of the launcher, the value to register.
        env: catalog environment (``KEY=VALUE`` entries) for the registration commands.
        files: how many files the launcher pins.
        size: their total size in bytes (byte-code not counted).
        bytecode_file: the pinned byte-code, next to the launcher.
        python: the interpreter the launcher runs.
    """

    name: str
    path: Path
    sha256: str
    env: tuple[str, ...]
    files: int
    size: int
    bytecode_file: Path
    python: str

    @property
    def command(self) -> str:
        """The catalog ``command``: the launcher's file name inside the plugin directory.

        Never an absolute path: the server joins it to ``plugin_directory`` and refuses
        anything that does not resolve (after symlinks) to a file directly in it.
        """
        return self.path.name

    @property
    def version(self) -> str:
        """The version the plugin reports, registered explicitly (see :meth:`bao_register_argv`)."""
        from . import __version__

        return f"v{__version__}"

    def bao_register_argv(self) -> list[str]:
        """``bao write sys/plugins/catalog/secret/NAME sha256=… command=… version=… env=K=V…``.

        OpenBao 2.7's ``bao plugin register`` has no ``-env`` flag; the catalog API has. The
        explicit version makes every registration, right or wrong, land on the same catalog
        entry: registering again with the right sha256 replaces a wrong one. Without it, a
        sha256 the server cannot run is stored as a second, unversioned entry that later
        registrations leave in place and that ``secrets enable`` prefers.
        """
        argv = ["bao", "write", f"sys/plugins/catalog/secret/{self.name}"]
        argv += [f"sha256={self.sha256}", f"command={self.command}", f"version={self.version}"]
        argv += [f"env={item}" for item in self.env]
        return argv

    def vault_register_argv(self) -> list[str]:
        """``vault plugin register -sha256=… -command=… -version=… -env=K=V… secret NAME``."""
        argv = ["vault", "plugin", "register", f"-sha256={self.sha256}"]
        argv += [f"-command={self.command}", f"-version={self.version}"]
        argv += [f"-env={item}" for item in self.env]
        return [*argv, "secret", self.name]

    def info_argv(self, cli: str = "bao") -> list[str]:
        """``bao plugin info -version=… secret NAME``: what the server stored."""
        return [cli, "plugin", "info", f"-version={self.version}", "secret", self.name]

    def enable_argv(self, mount_path: str, cli: str = "bao") -> list[str]:
        """``bao secrets enable -path=MOUNT -plugin-version=… NAME``."""
        return [
            cli,
            "secrets",
            "enable",
            f"-path={mount_path}",
            f"-plugin-version={self.version}",
            self.name,
        ]

    def instructions(self, mounts: Sequence[str] = ("skyflow/insurance",)) -> str:
        """The text ``skyflow-vault-plugin install`` prints."""

        def show(argv: Sequence[str]) -> str:
            return "  " + shlex.join(argv)

        lines = [
            f"Installed {self.path}",
            f"  runs {self.python} and pins {self.files} files "
            f"({self.size / 1e6:.1f} MB, byte-code in {self.bytecode_file.name} included)",
            "",
            f"sha256: {self.sha256}",
            "",
            "Register it with OpenBao (its `plugin register` has no -env flag; the catalog API "
            "takes env):",
            show(self.bao_register_argv()),
            "",
            "or with HashiCorp Vault:",
            show(self.vault_register_argv()),
            "",
            "The server stores a wrong sha256 without complaint; check that it shows the one "
            "above:",
            show(self.info_argv()),
            "",
            "Then enable one mount per business unit:",
            *[show(self.enable_argv(mount)) for mount in mounts],
            "",
            "Reinstall and register again whenever the virtualenv changes: the plugin refuses "
            "to start when a pinned file differs.",
        ]
        return "\n".join(lines)


def parse_env(items: Iterable[str]) -> tuple[str, ...]:
    """Validate ``KEY=VALUE`` items for the catalog's ``env`` list.

    Raises:
        InstallError: an item is not ``KEY=VALUE`` with a valid variable name.
    """
    parsed: list[str] = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise InstallError(f"--env wants KEY=VALUE with a valid variable name, got {item!r}")
        parsed.append(item)
    return tuple(parsed)


def install(
    plugin_dir: Path,
    name: str = DEFAULT_NAME,
    *,
    env: Iterable[str] = (),
    package_dir: Path | None = None,
    distributions: Sequence[metadata.Distribution] | None = None,
    python: str | None = None,
) -> Installation:
    """Write the launcher ``plugin_dir/name`` (and its byte-code) and return what was done.

    Args:
        plugin_dir: the server's ``plugin_directory`` (created if missing).
        name: the catalog name and file name.
        env: ``KEY=VALUE`` items for the printed registration commands.
        package_dir: the ``skyflow_vault_plugin`` directory to pin and run (default: the one
            this module belongs to). Tests point it at a copy.
        distributions: the distributions whose files to pin (default: the installed runtime
            closure of ``skyflow-vault-plugin``).
        python: the interpreter the launcher runs (default: the one this virtualenv was
            made from, see :func:`real_interpreter`). Tests point it at a copy.

    Raises:
        InstallError: a bad name or env item, an unusable interpreter path, or a virtualenv
            whose files no longer match pip's records.
    """
    if not _NAME.match(name):
        raise InstallError(f"--name must be letters, digits, '_', '.' or '-', got {name!r}")
    env_items = parse_env(env)
    plugin_dir = plugin_dir.resolve()
    package = (package_dir or PACKAGE_DIR).resolve()
    if not (package / "cli.py").is_file():
        raise InstallError(f"{package} is not the skyflow_vault_plugin package")
    interpreter = real_interpreter(python)
    identity = interpreter_identity(interpreter)
    dists = runtime_distributions() if distributions is None else list(distributions)
    roots, files = collect_files(package, dists)
    bytecode_file = plugin_dir / BYTECODE_FILE.format(name=name)
    manifest, count, size = build_manifest(roots, files, bytecode_file)
    content = render_launcher(manifest, interpreter, identity)
    target = plugin_dir / name
    _write_atomic(target, content, 0o755)
    return Installation(
        name=name,
        path=target,
        sha256=_sha256(content),
        env=env_items,
        files=count,
        size=size,
        bytecode_file=bytecode_file,
        python=interpreter,
    )


# -- start-up check ---------------------------------------------------------------------------


def _self_signed_pem() -> str:
    """A throwaway ECDSA P-521 certificate, like the one a host puts in PLUGIN_CLIENT_CERT."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP521R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA512())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fake_host_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a v5 host starts a plugin with (cookie, protocol, client cert)."""
    from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}
    env.update(
        {
            MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE,
            "PLUGIN_PROTOCOL_VERSIONS": "5",
            "PLUGIN_CLIENT_CERT": _self_signed_pem(),
            "BAO_PLUGIN_AUTOMTLS_ENABLED": "true",
            "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true",
            launcher.TIMING_ENV: "1",
        }
    )
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class StartupSample:
    """One start of a plugin executable under a fake host.

    Attributes:
        handshake_ms: from just before exec to the handshake line on stdout.
        verify_ms: the launcher's own report of its integrity check (``None`` when the
            executable is not a launcher).
        line: the handshake line.
    """

    handshake_ms: float
    verify_ms: float | None
    line: str


class StartupFailed(Exception):
    """The executable exited, or printed no handshake line in time."""


_VERIFY_LINE = re.compile(r"verified \d+ files \([\d.]+ MB\) in ([\d.]+) ms")


def measure_startup(
    command: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> StartupSample:
    """Start ``command`` as a host would and time it until its handshake line; then stop it.

    Raises:
        StartupFailed: it exited first (its stderr is in the message) or timed out.
    """
    environment = dict(env) if env is not None else fake_host_environment()
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    line = b""
    try:
        deadline = started + timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise StartupFailed(f"no handshake line within {timeout:.0f} s")
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
        elapsed = (time.perf_counter() - started) * 1000
    finally:
        if line.startswith(b"1|"):  # a handshake: it serves until stopped
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    text = line.decode(errors="replace").strip()
    if not text.startswith("1|5|unix|"):
        said = f"stdout: {text}\n" if text else ""
        raise StartupFailed(
            f"{command[0]} exited with status {proc.returncode} before its handshake:\n"
            f"{said}{stderr}"
        )
    match = _VERIFY_LINE.search(stderr)
    return StartupSample(
        handshake_ms=elapsed,
        verify_ms=float(match.group(1)) if match else None,
        line=text,
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def summarize(samples: Sequence[StartupSample]) -> dict[str, float | None]:
    """Median, min and max of the handshake times and the median verification time."""
    handshakes = [s.handshake_ms for s in samples]
    verifies = [s.verify_ms for s in samples if s.verify_ms is not None]
    return {
        "runs": float(len(samples)),
        "handshake_median_ms": _median(handshakes),
        "handshake_min_ms": min(handshakes),
        "handshake_max_ms": max(handshakes),
        "verify_median_ms": _median(verifies) if verifies else None,
    }
