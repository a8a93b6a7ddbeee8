"""Install the plugin into a Vault/OpenBao plugin directory, with a checksum that means something.

The host pins the sha256 of the one file it runs. :func:`install` writes that file as a
*launcher* (see :mod:`skyflow_vault_plugin.launcher`) which embeds the sha256 of every file
the plugin can import (what is pinned, and why: :mod:`skyflow_vault_plugin.pinning`). The
launcher checks each module as it loads it and all of them before the plugin may answer the
host, so the registered sha256 covers the code that runs, not only the launcher.

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

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import MAGIC_NUMBER
from pathlib import Path

from . import launcher
from .pinning import (
    InstallError,
    build_manifest,
    collect_files,
    marshalled_code,
    runtime_distributions,
    sha256_hex,
)

__all__ = [
    "DEFAULT_NAME",
    "InstallError",
    "Installation",
    "install",
    "interpreter_identity",
    "parse_env",
    "real_interpreter",
    "render_launcher",
]

DEFAULT_NAME = "skyflow"
PACKAGE_DIR = Path(__file__).resolve().parent
BYTECODE_FILE = ".{name}.bytecode"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_SHEBANG = 200  # Linux reads at most 255 bytes of "#!..." (older kernels: 127)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.chmod(mode)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# -- the interpreter and the launcher ---------------------------------------------------------


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
    """The launcher file: shebang, the interpreter's identity, the manifest, the launcher
    module's byte-code and its text, the call.

    The byte-code is what runs: a script is compiled from its text at every start (Python
    keeps no byte-code for the file it runs), which took about 7 ms of each start for this
    module. The text is kept for the reader, and runs only where the interpreter writes
    another byte-code format: then it is not the interpreter the plugin was installed with,
    and the launcher refuses to start, saying so.
    """
    if not os.path.isabs(python) or re.search(r"\s", python):
        raise InstallError(f"the interpreter path must be absolute without blanks: {python!r}")
    shebang = f"#!{python} -IS"
    if len(shebang) > _MAX_SHEBANG:
        raise InstallError(
            f"the interpreter path is too long for a shebang ({len(python)} characters); "
            "install Python at a shorter path"
        )
    body = Path(launcher.__file__).read_text(encoding="utf-8")
    if "'''" in body or body.endswith("\\"):  # SOURCE is a raw triple-quoted literal
        raise InstallError(f"{launcher.__file__} cannot be embedded as r'''...'''")
    code = marshalled_code(Path(launcher.__file__), body)
    return (
        f"{shebang}\n"
        "# skyflow-vault-plugin launcher, written by `skyflow-vault-plugin install`.\n"
        "# Register this file's sha256; it pins every file the plugin imports. Do not edit.\n"
        "#\n"
        "# What it does is skyflow_vault_plugin/launcher.py, whose text is SOURCE below.\n"
        "# LAUNCHER is that text compiled at install time (MAGIC: the byte-code format); it\n"
        "# runs instead of the text, which would be compiled again at every start.\n"
        "import sys\n\n"
        f"INTERPRETER = {dict(identity) if identity is not None else None!r}\n"
        f"MANIFEST = {manifest_json!r}\n"
        f"MAGIC = {MAGIC_NUMBER.hex()!r}\n"
        f"LAUNCHER = {code!r}\n"
        f"SOURCE = r'''{body}'''\n\n"
        'if __name__ == "__main__":\n'
        "    import marshal\n"
        "    from _frozen_importlib_external import MAGIC_NUMBER  # frozen: no file is read\n\n"
        "    if MAGIC_NUMBER.hex() == MAGIC:\n"
        "        exec(marshal.loads(LAUNCHER))\n"
        "    else:  # another interpreter: the text runs, and refuses to start\n"
        '        exec(compile(SOURCE, "launcher.py", "exec"))\n'
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
    manifest = build_manifest(roots, files, bytecode_file)
    _write_atomic(bytecode_file, manifest.bytecode, 0o644)
    content = render_launcher(manifest.json, interpreter, identity)
    target = plugin_dir / name
    _write_atomic(target, content, 0o755)
    return Installation(
        name=name,
        path=target,
        sha256=sha256_hex(content),
        env=env_items,
        files=manifest.files,
        size=manifest.size,
        bytecode_file=bytecode_file,
        python=interpreter,
    )
