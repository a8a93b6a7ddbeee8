"""The install helper and the launcher it writes: a sha256 that covers the code that runs.

Tampering tests work on a *copy* of the package (``install(package_dir=copy)``), so the
repository and its virtualenv are never modified.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import marshal
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

import skyflow_vault_plugin
import vault_plugin_sdk
from skyflow_vault_plugin import launcher
from skyflow_vault_plugin.install import InstallError, install, parse_env, render_launcher
from skyflow_vault_plugin.pinning import _requirement_name, collect_files, runtime_distributions
from skyflow_vault_plugin.startup import StartupFailed, fake_host_environment, measure_startup

PACKAGE = Path(skyflow_vault_plugin.__file__).resolve().parent
REAL_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
STDLIB_PATH = subprocess.run(
    [REAL_PYTHON, "-IS", "-c", "import sys; print('\\n'.join(sys.path))"],
    capture_output=True,
    text=True,
    check=True,
).stdout.split()


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package in its own directory (no __pycache__)."""
    target = tmp_path / "src" / "skyflow_vault_plugin"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture(scope="module")
def host_env() -> dict[str, str]:
    return fake_host_environment()


def _run(
    path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(path), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


# -- what gets pinned ----------------------------------------------------------------------------


def test_requirement_names() -> None:
    assert _requirement_name("grpclib>=0.4.7") == "grpclib"
    assert _requirement_name("uvloop>=0.19; sys_platform != 'win32'") == "uvloop"
    assert _requirement_name("starlette>=0.40; extra == 'emulator'") is None
    assert _requirement_name('pytest ; extra == "dev"') is None


def test_runtime_closure_has_dependencies_and_no_dev_tools() -> None:
    names = {d.metadata["Name"].lower().replace("_", "-") for d in runtime_distributions()}
    assert {"skyflow-vault-plugin", "grpclib", "h2", "protobuf", "httpx", "httpcore"} <= names
    assert {"pyjwt", "cryptography", "opentelemetry-sdk"} <= names
    # extras and dev tools are not part of what the plugin runs
    assert not {"pytest", "hvac", "starlette", "uvicorn", "mypy"} & names


def _fake_dist(site: Path, *, tamper: bool) -> metadata.Distribution:
    (site / "fakepkg").mkdir(parents=True)
    module = site / "fakepkg" / "__init__.py"
    module.write_text("VALUE = 1\n")
    digest = hashlib.sha256(module.read_bytes()).digest()
    recorded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        f"fakepkg/__init__.py,sha256={recorded},10\n"
        "fakepkg-1.0.dist-info/METADATA,,\nfakepkg-1.0.dist-info/RECORD,,\n"
        "../../../bin/fake,,\n"
    )
    if tamper:
        module.write_text("VALUE = 2\n")
    return metadata.PathDistribution(info)


def test_collect_files_pins_record_files_and_skips_volatile_ones(
    tmp_path: Path, package_copy: Path
) -> None:
    dist = _fake_dist(tmp_path / "site", tamper=False)
    roots, files = collect_files(package_copy, [dist])
    sdk_root = str(Path(vault_plugin_sdk.__file__).resolve().parents[1])
    assert roots == [str(package_copy.parent), sdk_root, str((tmp_path / "site").resolve())]
    rels = {(f.root_index, f.rel) for f in files}
    assert (0, "skyflow_vault_plugin/cli.py") in rels
    assert (0, "skyflow_vault_plugin/launcher.py") in rels
    # the SDK the engine runs on is pinned, its test helpers for plugin authors are not
    assert (1, "vault_plugin_sdk/plugin/serve.py") in rels
    assert not any(rel.startswith("vault_plugin_sdk/testing") for _, rel in rels)
    assert (2, "fakepkg/__init__.py") in rels
    assert (2, "fakepkg-1.0.dist-info/METADATA") in rels
    # RECORD differs with how pip was run; scripts in bin/ are never imported
    assert (2, "fakepkg-1.0.dist-info/RECORD") not in rels
    assert not any("__pycache__" in rel or rel.startswith("..") for _, rel in rels)


def test_a_virtualenv_changed_after_pip_is_refused_at_install(
    tmp_path: Path, package_copy: Path
) -> None:
    dist = _fake_dist(tmp_path / "site", tamper=True)
    with pytest.raises(InstallError, match=r"fakepkg/__init__\.py does not match .* RECORD"):
        collect_files(package_copy, [dist])


def test_bad_names_env_and_interpreter_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="--name"):
        install(tmp_path, "../escape")
    with pytest.raises(InstallError, match="KEY=VALUE"):
        parse_env(["NOEQUALS"])
    with pytest.raises(InstallError, match="KEY=VALUE"):
        parse_env(["1BAD=x"])
    assert parse_env(["A=b=c", "SSL_CERT_FILE=/x y"]) == ("A=b=c", "SSL_CERT_FILE=/x y")
    with pytest.raises(InstallError, match="absolute without blanks"):
        render_launcher("{}", "/path with blank/python")
    with pytest.raises(InstallError, match="too long"):
        render_launcher("{}", "/" + "x" * 300)


def test_the_launcher_runs_its_install_time_byte_code_and_keeps_its_text(
    tmp_path: Path, package_copy: Path
) -> None:
    """A script is compiled from its text at every start; the launcher's text is compiled
    once, at install, and kept beside its byte-code for the reader (and for an interpreter
    of another byte-code format, which runs the text and is refused by it)."""
    result = install(tmp_path / "plugins", package_dir=package_copy)
    text = result.path.read_text()
    main = text.split('\nif __name__ == "__main__":\n')[1]
    namespace = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(text).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    source = Path(launcher.__file__).read_text(encoding="utf-8")
    assert namespace["SOURCE"] == source
    assert namespace["MAGIC"] == importlib.util.MAGIC_NUMBER.hex()
    code = marshal.loads(namespace["LAUNCHER"])  # noqa: S302 -- what install just wrote
    assert code == compile(source, launcher.__file__, "exec", dont_inherit=True)
    assert "exec(marshal.loads(LAUNCHER))" in main
    assert _run(result.path, "--version").returncode == 0

    # Another byte-code format: the text runs (here it finds the same interpreter and starts).
    magic = f"\nMAGIC = {namespace['MAGIC']!r}\n"
    result.path.write_text(text.replace(magic, "\nMAGIC = 'ffffffff'\n"))
    version = _run(result.path, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, "skyflow-vault-plugin v0.1.0")
    # ...and refuses when the interpreter is not the one recorded (here: its version).
    recorded = repr(sys.version)
    assert recorded in text
    result.path.write_text(
        text.replace(magic, "\nMAGIC = 'ffffffff'\n").replace(recorded, repr("2.7.18"), 1)
    )
    refused = _run(result.path, "--version")
    assert refused.returncode == launcher.EXIT_TAMPERED
    assert "sys.version is" in refused.stderr


# -- the launcher in-process -----------------------------------------------------------------------


def _manifest(root: Path, blob: bytes, files: Sequence[Sequence[object]]) -> dict[str, object]:
    """A launcher manifest over ``files`` under ``root``, with ``blob`` as its byte-code file."""
    (root / "bc").write_bytes(blob)
    return {
        "format": launcher.FORMAT,
        "entry": "m:main",
        "magic": importlib.util.MAGIC_NUMBER.hex(),
        "path": [str(root)],
        "bytecode": {"file": str(root / "bc"), "sha256": hashlib.sha256(blob).hexdigest()},
        "files": files,
    }


def test_verify_names_a_changed_or_missing_file(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    code = marshal.dumps(compile(module.read_bytes(), str(module), "exec"))
    blob = importlib.util.MAGIC_NUMBER + code
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    manifest = _manifest(tmp_path, blob, [[0, "m.py", digest, [4, len(code), "x"]]])
    files, size, fd = launcher.verify(launcher.Pinned(manifest))
    os.close(fd)
    assert (files, size) == (2, module.stat().st_size + len(blob))

    module.write_text("x = 2\n")
    with pytest.raises(launcher.IntegrityError, match=r"m\.py changed since it was installed"):
        launcher.verify(launcher.Pinned(manifest))
    module.unlink()
    with pytest.raises(launcher.IntegrityError, match=r"m\.py is missing"):
        launcher.verify(launcher.Pinned(manifest))
    with pytest.raises(launcher.IntegrityError, match="manifest format"):
        launcher.Pinned({**manifest, "format": 99})


@pytest.mark.parametrize("separate_process", [False, True])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_verify_reports_the_first_difference_in_manifest_order(
    tmp_path: Path, workers: int, separate_process: bool
) -> None:
    """Workers (and the child process) hash in any order; what the operator reads must not
    depend on it."""
    blob = importlib.util.MAGIC_NUMBER + b"code"
    # Two of them look like native libraries: this process's threads hash those, the child
    # process (with separate_process) the others.
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    names = [f"m{i:02d}{suffix if i in (3, 20) else '.txt'}" for i in range(24)]
    for name in names:
        (tmp_path / name).write_text(name)
    pinned = [[0, name, hashlib.sha256(name.encode()).hexdigest(), None] for name in names]
    manifest = _manifest(tmp_path, blob, pinned)

    def check() -> tuple[int, int, int]:
        return launcher.verify(
            launcher.Pinned(manifest), workers=workers, separate_process=separate_process
        )

    files, size, fd = check()
    os.close(fd)
    assert (files, size) == (25, sum(len(name) for name in names) + len(blob))

    (tmp_path / "m17.txt").write_text("changed")
    (tmp_path / "m05.txt").unlink()
    (tmp_path / "m21.txt").write_text("changed too")
    (tmp_path / f"m20{suffix}").write_text("changed as well")
    for _ in range(5):
        with pytest.raises(launcher.IntegrityError, match=r"m05\.txt is missing"):
            check()
    (tmp_path / "m05.txt").write_text("m05.txt")
    with pytest.raises(launcher.IntegrityError, match=r"m17\.txt changed since"):
        check()
    (tmp_path / "m17.txt").write_text("m17.txt")
    with pytest.raises(launcher.IntegrityError, match=r"m20\..* changed since"):
        check()
    (tmp_path / f"m03{suffix}").write_text("changed")
    with pytest.raises(launcher.IntegrityError, match=r"m03\..* changed since"):
        check()
    for name in (f"m03{suffix}", f"m20{suffix}", "m21.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "bc").write_bytes(blob + b"!")
    with pytest.raises(launcher.IntegrityError, match=r"bc changed since it was installed"):
        check()


# -- installed launchers --------------------------------------------------------------------------


def test_install_writes_a_launcher_that_starts_and_reports_its_check(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str]
) -> None:
    plugins = tmp_path / "plugins"
    result = install(plugins, "skyflow", package_dir=package_copy, env=["ENV=dev"])
    assert result.path == plugins / "skyflow"
    assert os.access(result.path, os.X_OK)
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert result.bytecode_file == plugins / ".skyflow.bytecode"
    first_line = result.path.read_text().splitlines()[0]
    # The interpreter binary itself: no file of the virtualenv is read before verification.
    assert first_line == f"#!{REAL_PYTHON} -IS"
    assert result.python == REAL_PYTHON
    assert result.files > 500  # the package and its dependencies

    sample = measure_startup([str(result.path)], env=host_env)
    assert sample.line.startswith("1|5|unix|")
    assert sample.verify_ms is not None
    assert sample.verify_ms > 0
    assert sample.native_wait_ms is not None

    # Run by hand: verified, then the plugin explains itself (exit 1, no traceback).
    by_hand = _run(result.path)
    assert by_hand.returncode == 1
    assert "This binary is a plugin" in by_hand.stderr
    assert "Traceback" not in by_hand.stderr
    version = _run(result.path, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, "skyflow-vault-plugin v0.1.0")


def test_tampering_with_an_installed_module_makes_the_plugin_refuse_to_start(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str]
) -> None:
    result = install(tmp_path / "plugins", package_dir=package_copy)
    target = package_copy / "skyflow" / "path_creds.py"
    target.write_text(target.read_text() + "\n# a harmless-looking change\n")

    with pytest.raises(StartupFailed, match=r"exited with status 3") as failed:
        measure_startup([str(result.path)], env=host_env)
    assert f"{target} changed since it was installed" in str(failed.value)
    by_hand = _run(result.path, "--version")
    assert by_hand.returncode == launcher.EXIT_TAMPERED
    assert "refusing to start" in by_hand.stderr
    assert str(target) in by_hand.stderr
    assert by_hand.stdout == ""
    assert "Traceback" not in by_hand.stderr


def test_tampered_or_missing_bytecode_is_refused(tmp_path: Path, package_copy: Path) -> None:
    result = install(tmp_path / "plugins", package_dir=package_copy)
    data = bytearray(result.bytecode_file.read_bytes())
    data[-1] ^= 0xFF
    result.bytecode_file.write_bytes(bytes(data))
    tampered = _run(result.path, "--version")
    assert tampered.returncode == launcher.EXIT_TAMPERED
    assert ".skyflow.bytecode changed since it was installed" in tampered.stderr

    result.bytecode_file.unlink()
    missing = _run(result.path, "--version")
    assert missing.returncode == launcher.EXIT_TAMPERED
    assert ".skyflow.bytecode is missing" in missing.stderr


def test_pycache_python_path_and_shadowing_files_are_ignored_or_refused(
    tmp_path: Path, package_copy: Path
) -> None:
    result = install(tmp_path / "plugins", package_dir=package_copy)

    # 1. A byte-code file planted in __pycache__ that Python itself would trust (it claims
    #    the source's mtime and size). Plain Python runs it; the launcher never looks there.
    cli = package_copy / "cli.py"
    evil = compile(cli.read_text() + "\nprint('INJECTED')\n", str(cli), "exec")
    stat = cli.stat()
    bootstrap = importlib.import_module("importlib._bootstrap_external")
    pyc = bootstrap._code_to_timestamp_pyc(evil, int(stat.st_mtime), stat.st_size)
    cache = Path(importlib.util.cache_from_source(str(cli)))
    cache.parent.mkdir(exist_ok=True)
    cache.write_bytes(bytes(pyc))
    plain = subprocess.run(
        [sys.executable, "-c", "import sys; from skyflow_vault_plugin.cli import main"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(package_copy.parent)},
        cwd=tmp_path,
        check=False,
    )
    assert "INJECTED" in plain.stdout  # the attack is real for an unpinned interpreter
    launched = _run(result.path, "--version")
    assert launched.returncode == 0
    assert "INJECTED" not in launched.stdout

    # 2. PYTHONPATH (and every other PYTHON* variable) is ignored: -I.
    decoy = tmp_path / "decoy" / "skyflow_vault_plugin"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("print('INJECTED')\n")
    env = {**os.environ, "PYTHONPATH": str(decoy.parent), "PYTHONSTARTUP": str(decoy)}
    launched = _run(result.path, "--version", env=env)
    assert launched.returncode == 0
    assert "INJECTED" not in launched.stdout

    # 3. An extension module next to a pinned module would be imported first: refused.
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package_copy / f"cli{suffix}").write_bytes(b"\x7fELF not really")
    shadowed = _run(result.path, "--version")
    assert shadowed.returncode == launcher.EXIT_TAMPERED
    assert f"cli{suffix} is not pinned by this plugin's launcher" in shadowed.stderr
    assert "Traceback" not in shadowed.stderr


def test_dependencies_left_out_of_the_manifest_cannot_be_imported(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str]
) -> None:
    # Their directory is not even on sys.path: only pinned directories are.
    result = install(tmp_path / "plugins", package_dir=package_copy, distributions=[])
    with pytest.raises(StartupFailed, match="No module named 'grpclib'"):
        measure_startup([str(result.path)], env=host_env)


def test_same_code_same_path_gives_the_same_sha256(tmp_path: Path, package_copy: Path) -> None:
    """Every node of a cluster installs its own copy; one catalog sha256 must fit them all."""
    plugins = tmp_path / "plugins"
    first = install(plugins, package_dir=package_copy)
    shutil.rmtree(plugins)
    script = (
        "import sys; from pathlib import Path; from skyflow_vault_plugin.install import install; "
        f"print(install(Path({str(plugins)!r}), package_dir=Path({str(package_copy)!r})).sha256)"
    )
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert other.stdout.strip() == first.sha256


def test_instructions_show_both_registration_forms(tmp_path: Path, package_copy: Path) -> None:
    result = install(
        tmp_path / "plugins", "sky", package_dir=package_copy, env=["SSL_CERT_FILE=/etc/ca.pem"]
    )
    text = result.instructions(["skyflow/insurance", "skyflow/lending"])
    assert f"sha256: {result.sha256}" in text
    assert (
        f"bao write sys/plugins/catalog/secret/sky sha256={result.sha256} command=sky "
        "version=v0.1.0 env=SSL_CERT_FILE=/etc/ca.pem"
    ) in text
    assert (
        f"vault plugin register -sha256={result.sha256} -command=sky -version=v0.1.0 "
        "-env=SSL_CERT_FILE=/etc/ca.pem secret sky"
    ) in text
    assert "bao plugin info -version=v0.1.0 secret sky" in text
    assert "bao secrets enable -path=skyflow/insurance -plugin-version=v0.1.0 sky" in text
    assert "bao secrets enable -path=skyflow/lending -plugin-version=v0.1.0 sky" in text
    literal = result.path.read_text().split("\nMANIFEST = ", 1)[1].split("\n", 1)[0]
    manifest = json.loads(ast.literal_eval(literal))
    assert manifest["entry"] == "skyflow_vault_plugin.cli:main"
    assert manifest["path"][0] == str(package_copy.parent)


# -- what runs before verification: the interpreter and its neighbours ----------------------------


def _interpreter_copy(tmp_path: Path) -> Path:
    """A copy of the interpreter binary in a directory the test may plant files in (it
    finds the real standard library through its compiled-in prefix)."""
    copy = tmp_path / "py" / "bin" / Path(REAL_PYTHON).name
    copy.parent.mkdir(parents=True)
    shutil.copy2(REAL_PYTHON, copy)
    return copy


def _evil_module_dir(tmp_path: Path) -> Path:
    """A directory whose ``json`` module announces itself: the launcher imports json."""
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "json.py").write_text("print('INJECTED')\nfrom _json import *\n")
    return evil


def test_planted_virtualenv_files_have_no_effect(tmp_path: Path, package_copy: Path) -> None:
    """pyvenv.cfg and python3.X._pth in the virtualenv take over its bin/python even with
    -IS; the launcher runs the real interpreter, so they are never read."""
    venv = tmp_path / "venv"
    subprocess.run([REAL_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_python = venv / "bin" / "python"
    evil = _evil_module_dir(tmp_path)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for name in ("python", version):  # bin/python (the old shebang) and bin/python3.X
        (venv / "bin" / f"{name}._pth").write_text("\n".join([str(evil), *STDLIB_PATH]) + "\n")
    # The attack is real for the virtualenv's interpreter, isolated or not:
    attacked = subprocess.run(
        [str(venv_python), "-IS", "-c", "import json"], capture_output=True, text=True
    )
    assert "INJECTED" in attacked.stdout

    result = install(tmp_path / "plugins", package_dir=package_copy, python=str(venv_python))
    assert result.python == REAL_PYTHON
    (venv / "pyvenv.cfg").write_text(f"home = {evil}\n")
    launched = _run(result.path, "--version")
    assert (launched.returncode, launched.stdout) == (0, "skyflow-vault-plugin v0.1.0\n")
    assert "INJECTED" not in launched.stdout + launched.stderr


def test_planted_pth_or_pyvenv_cfg_next_to_the_interpreter_makes_it_refuse(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str]
) -> None:
    python = _interpreter_copy(tmp_path)
    result = install(tmp_path / "plugins", package_dir=package_copy, python=str(python))
    assert result.path.read_text().splitlines()[0] == f"#!{python} -IS"
    assert _run(result.path, "--version").returncode == 0

    # 1. A ._pth file replaces sys.path (here: one extra directory after the stdlib).
    extra = tmp_path / "extra"
    extra.mkdir()
    pth = python.parent / f"{python.name}._pth"
    pth.write_text("\n".join([*STDLIB_PATH, str(extra)]) + "\n")
    refused = _run(result.path, "--version")
    assert refused.returncode == launcher.EXIT_TAMPERED
    assert "sys.path" in refused.stderr
    assert "python3.X._pth" in refused.stderr
    assert refused.stdout == ""
    pth.unlink()

    # 2. A pyvenv.cfg in the interpreter's parent directory moves sys.prefix to another
    #    Python home (here one whose standard library is a link to the real one).
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    stdlib = Path(os.__file__).parent
    (home / "lib" / stdlib.name).symlink_to(stdlib)
    (python.parent.parent / "pyvenv.cfg").write_text(f"home = {home / 'bin'}\n")
    refused = _run(result.path, "--version")
    assert refused.returncode == launcher.EXIT_TAMPERED
    assert "sys.prefix is" in refused.stderr
    assert "pyvenv.cfg" in refused.stderr

    # Under a server: an hclog error line (logged at the default level) and the reason on
    # stdout, which go-plugin quotes in the error a request gets.
    refused = _run(result.path, env=host_env)
    assert refused.returncode == launcher.EXIT_TAMPERED
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("{")]
    logged = json.loads(line)
    assert logged["@level"] == "error"
    assert logged["@message"].startswith("skyflow-vault-plugin: refusing to start: ")
    assert "sys.prefix is" in logged["@message"]
    assert "install" in logged["fix"]
    assert refused.stdout.startswith("skyflow-vault-plugin: refusing to start: ")
    assert "|" not in refused.stdout


def test_check_interpreter_names_what_differs() -> None:
    identity = launcher.interpreter_identity()
    launcher.check_interpreter(identity)
    for field, cause in [("version", "replaced or upgraded"), ("base_prefix", "pyvenv.cfg")]:
        identity = launcher.interpreter_identity()
        with pytest.raises(launcher.IntegrityError, match=f"sys.{field} is .*{cause}"):
            launcher.check_interpreter({**identity, field: "other"})


# -- native code and metadata come from what was verified -----------------------------------------

PROBE = """
import os
import sys


def main() -> int:
    from importlib.metadata import entry_points

    here = os.path.dirname(__file__)
    (name,) = [n for n in os.listdir(here) if n.startswith("_bisect.")]
    target = os.path.join(here, name)
    if os.environ.get("SWAP_EXTENSION") == "1":  # an attacker replaces it after the check
        sys.stdout.check.wait()  # the launcher's gate: the check has read the library
        os.replace(os.path.join(here, "swap.bin"), target)
    from skyflow_vault_plugin import _bisect

    with open("/proc/self/maps") as maps:
        mapped = maps.read()
    print("mapped from path:", target in mapped)
    print("mapped from sealed copy:", "memfd:skyflow-plugin:" + name in mapped)
    print("works:", _bisect.bisect_right([1, 2, 3], 2))
    print("entry points:", sorted(ep.name for ep in entry_points(group="skyflow_test")))
    return 0
"""


def _dist(site: Path, name: str, entry_points: str | None) -> metadata.Distribution:
    """A minimal installed distribution with a RECORD, optionally with entry points."""
    package = site / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    records = [f"{name}/__init__.py,,", f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)
        records.append(f"{info.name}/entry_points.txt,,")
    (info / "RECORD").write_text("\n".join(records) + "\n")
    return metadata.PathDistribution(info)


def _probe_launcher(tmp_path: Path, package_copy: Path) -> Path:
    """An installed launcher whose entry point is the probe above, with a copy of a stdlib
    extension module inside the pinned package and two pinned distributions."""
    import _bisect

    extension = Path(str(_bisect.__file__))
    shutil.copy2(extension, package_copy / extension.name)
    (package_copy / "_probe.py").write_text(PROBE)
    site = tmp_path / "site"
    dists = [
        _dist(site, "goodpkg", "[skyflow_test]\ngood = goodpkg\n"),
        _dist(site, "plainpkg", None),
    ]
    result = install(tmp_path / "plugins", package_dir=package_copy, distributions=dists)
    text = result.path.read_text()
    entry = '"entry":"skyflow_vault_plugin.cli:main"'
    assert entry in text
    result.path.write_text(text.replace(entry, '"entry":"skyflow_vault_plugin._probe:main"'))
    # Unpinned: a planted distribution, and entry points planted into a pinned one.
    planted = site / "evil-1.0.dist-info"
    planted.mkdir()
    (planted / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    (planted / "entry_points.txt").write_text("[skyflow_test]\nevil = goodpkg\n")
    (site / "plainpkg-1.0.dist-info" / "entry_points.txt").write_text(
        "[skyflow_test]\nsneaky = goodpkg\n"
    )
    return result.path


def _run_probe(tmp_path: Path, package_copy: Path) -> tuple[Path, str]:
    """The probe launcher, and what it printed when it ran cleanly."""
    path = _probe_launcher(tmp_path, package_copy)
    ran = _run(path)
    assert ran.returncode == 0, ran.stderr
    return path, ran.stdout


def test_extension_modules_load_from_the_bytes_that_were_hashed(
    tmp_path: Path, package_copy: Path
) -> None:
    path, stdout = _run_probe(tmp_path, package_copy)
    assert "mapped from path: False" in stdout
    assert "mapped from sealed copy: True" in stdout
    assert "works: 2" in stdout

    # Swapped after the start-up check, before the import: no effect, the bytes checked at
    # start are the bytes loaded (loading the swapped file by path would fail: it has no
    # PyInit__bisect).
    import _heapq

    shutil.copy2(str(_heapq.__file__), package_copy / "swap.bin")
    swapped = _run(path, env={**os.environ, "SWAP_EXTENSION": "1"})
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    assert "works: 2" in swapped.stdout
    assert "mapped from sealed copy: True" in swapped.stdout
    assert (package_copy / extension_name(package_copy)).read_bytes() != Path(
        str(_bisect_module().__file__)
    ).read_bytes()
    # Swapped before the start: refused at the check.
    refused = _run(path)
    assert refused.returncode == launcher.EXIT_TAMPERED
    assert "_bisect." in refused.stderr
    assert "changed since it was installed" in refused.stderr


def extension_name(package: Path) -> str:
    (name,) = [p.name for p in package.iterdir() if p.name.startswith("_bisect.")]
    return name


def _bisect_module() -> ModuleType:
    import _bisect

    return _bisect


def test_metadata_shows_only_pinned_distributions_and_files(
    tmp_path: Path, package_copy: Path
) -> None:
    _, stdout = _run_probe(tmp_path, package_copy)
    # A plain interpreter would list evil and sneaky too (OpenTelemetry loads such entry
    # points by name from OTEL_* variables).
    assert "entry points: ['good']" in stdout


# -- the check runs alongside the imports; nothing reaches stdout before it passes ----------------

# Long enough that the imports are over (or the entry point has written) well before the
# check goes on, on a busy machine too. run(check_delays=(before the native libraries, before
# the other files)): an import waits for its native library, so a check slower than the
# imports is one held back after the libraries.
SLOW_CHECK = 1.0


def _launcher(
    tmp_path: Path,
    package_copy: Path,
    *,
    entry: str | None = None,
    run_args: str = "",
    distributions: Sequence[metadata.Distribution] | None = None,
) -> Path:
    """An installed launcher, with ``entry`` (the text of a module with ``main()``) as its
    entry point instead of the plugin's, and ``run_args`` added to its ``run()`` call."""
    if entry is not None:
        (package_copy / "_entry.py").write_text(entry)
    result = install(tmp_path / "plugins", package_dir=package_copy, distributions=distributions)
    text = result.path.read_text()
    if entry is not None:
        pinned_entry = '"entry":"skyflow_vault_plugin.cli:main"'
        assert pinned_entry in text
        text = text.replace(pinned_entry, '"entry":"skyflow_vault_plugin._entry:main"')
    if run_args:
        call = "sys.exit(run(MANIFEST, INTERPRETER))"
        assert call in text
        text = text.replace(call, f"sys.exit(run(MANIFEST, INTERPRETER, {run_args}))")
    result.path.write_text(text)
    return result.path


def _tamper_unimported(package_copy: Path) -> Path:
    """Change a module the plugin imports at its first request, not before its handshake."""
    target = package_copy / "skyflow" / "path_creds.py"
    target.write_text(target.read_text() + "\n# a harmless-looking change\n")
    return target


def _hclog_errors(stderr: str) -> list[dict[str, str]]:
    lines = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    return [line for line in lines if line.get("@level") == "error"]


@pytest.mark.parametrize("separate_process", [True, False])
def test_a_changed_file_never_imported_stops_the_plugin_before_its_handshake(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str], separate_process: bool
) -> None:
    """The check ends long after the imports: the plugin, ready to serve, must not say so.
    (Without a child process the check runs before the imports: the same outcome.)"""
    path = _launcher(
        tmp_path,
        package_copy,
        run_args=f"check_delays=(0, {SLOW_CHECK}), separate_process={separate_process}",
    )
    target = _tamper_unimported(package_copy)
    started = time.monotonic()
    refused = _run(path, env=host_env)
    assert time.monotonic() - started >= SLOW_CHECK
    assert refused.returncode == launcher.EXIT_TAMPERED, refused.stderr
    # stdout holds the refusal and nothing else: no handshake line, before or after it
    (line,) = refused.stdout.splitlines()
    assert line.startswith("skyflow-vault-plugin: refusing to start: ")
    assert f"{target} changed since it was installed" in line
    (logged,) = _hclog_errors(refused.stderr)
    assert f"{target} changed since it was installed" in logged["@message"]
    assert "Traceback" not in refused.stderr


GC_PROBE = """
import gc
import sys


def main() -> int:
    before = gc.isenabled()
    collections = []
    gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info))
    print("up", flush=True)  # the handshake line opens stdout
    gc.callbacks.clear()
    print(
        f"collector before {before}, after {gc.isenabled()}; collections while the line "
        f"left {collections}; frozen {gc.get_freeze_count() > 0}",
        file=sys.stderr,
    )
    return 0
"""


def test_the_garbage_collector_is_off_until_the_handshake(
    tmp_path: Path, package_copy: Path
) -> None:
    """The imports make objects that nearly all live on: the launcher skips looking for
    cycles among them, freezes them when the handshake line opens stdout (so that no
    collection, then or later, looks at them: the first one would delay the line), and
    collects as usual from there on."""
    ran = _run(_launcher(tmp_path, package_copy, entry=GC_PROBE))
    assert (ran.returncode, ran.stdout) == (0, "up\n"), ran.stderr
    said = "collector before False, after True; collections while the line left []"
    assert said in ran.stderr
    assert "frozen True" in ran.stderr


EARLY_WRITER = """
import sys
import time


def main() -> int:
    check = getattr(sys.stdout, "check", None)  # the launcher's gate, until the check passed
    started = time.monotonic()
    print("up", flush=True)  # what a plugin's handshake does, at once
    blocked = time.monotonic() - started
    done = check is not None and check.done.is_set()
    print(f"blocked {blocked:.2f} s; check done: {done}", file=sys.stderr)
    return 0
"""


def test_nothing_reaches_stdout_before_the_check_has_passed(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str]
) -> None:
    # An entry point that writes to stdout at once: the write waits for the check.
    writer = _launcher(
        tmp_path / "writer",
        package_copy,
        entry=EARLY_WRITER,
        run_args=f"check_delays=(0, {SLOW_CHECK})",
    )
    ran = _run(writer)
    assert (ran.returncode, ran.stdout) == (0, "up\n"), ran.stderr
    said = ran.stderr.split("blocked ", 1)[1]
    assert float(said.split(" s;")[0]) >= 0.5 * SLOW_CHECK
    assert "check done: True" in said

    # The plugin itself: its handshake line comes after the (slow) check, which reports how
    # long stdout waited for it.
    plugin = _launcher(
        tmp_path / "plugin", package_copy, run_args=f"check_delays=(0, {SLOW_CHECK})"
    )
    sample = measure_startup([str(plugin)], env=host_env)
    assert sample.line.startswith("1|5|unix|")
    assert sample.handshake_ms >= SLOW_CHECK * 1000
    assert sample.verify_ms is not None
    assert sample.verify_ms >= SLOW_CHECK * 1000


@pytest.mark.parametrize("separate_process", [True, False])
def test_one_report_when_the_import_hook_and_the_check_both_refuse(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str], separate_process: bool
) -> None:
    """The hook refuses at once on the main thread, the check fails later on its own: one
    report, the check's (it names the first difference in manifest order)."""
    path = _launcher(
        tmp_path,
        package_copy,
        run_args=f"check_delays=(0, {SLOW_CHECK}), separate_process={separate_process}",
    )
    target = _tamper_unimported(package_copy)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package_copy / f"cli{suffix}").write_bytes(b"\x7fELF not really")  # unpinned: refused
    refused = _run(path, env=host_env)
    assert refused.returncode == launcher.EXIT_TAMPERED, refused.stderr
    (line,) = refused.stdout.splitlines()
    assert f"{target} changed since it was installed" in line
    (logged,) = _hclog_errors(refused.stderr)
    assert logged["@message"] == line
    assert "is not pinned" not in refused.stderr

    # Without the changed file, the hook's refusal is the one report.
    target.write_text(target.read_text().removesuffix("\n# a harmless-looking change\n"))
    refused = _run(path, env=host_env)
    assert refused.returncode == launcher.EXIT_TAMPERED, refused.stderr
    (line,) = refused.stdout.splitlines()
    assert f"cli{suffix} is not pinned by this plugin's launcher" in line
    assert len(_hclog_errors(refused.stderr)) == 1


BUSY_ENTRY = """
import time


def main() -> int:
    time.sleep(30)  # still busy (importing, say) when the check fails
    print("up")
    return 0
"""


def test_a_failed_check_ends_the_process_while_the_main_thread_is_busy(
    tmp_path: Path, package_copy: Path, host_env: dict[str, str]
) -> None:
    path = _launcher(tmp_path, package_copy, entry=BUSY_ENTRY)
    target = _tamper_unimported(package_copy)
    started = time.monotonic()
    refused = _run(path, env=host_env)
    assert time.monotonic() - started < 15
    assert refused.returncode == launcher.EXIT_TAMPERED, refused.stderr
    (line,) = refused.stdout.splitlines()
    assert f"{target} changed since it was installed" in line


QUIET_REFUSAL = """
import sys


def main() -> int:
    print("not started by a host", file=sys.stderr)  # as the plugin run by hand
    return 1
"""


@pytest.mark.parametrize("separate_process", [True, False])
def test_an_entry_point_that_ends_without_writing_still_waits_for_the_check(
    tmp_path: Path, package_copy: Path, separate_process: bool
) -> None:
    # It returns 1 at once, writing nothing to stdout, while the check still runs: the
    # changed file still decides the exit status.
    path = _launcher(
        tmp_path,
        package_copy,
        entry=QUIET_REFUSAL,
        run_args=f"check_delays=(0, {SLOW_CHECK}), separate_process={separate_process}",
    )
    target = _tamper_unimported(package_copy)
    refused = _run(path)
    assert refused.returncode == launcher.EXIT_TAMPERED, refused.stderr
    if separate_process:  # else the check ran first
        assert refused.stderr.startswith("not started by a host\n")
    assert f"refusing to start: {target} changed since it was installed" in refused.stderr
    assert refused.stdout == ""


NATIVE_PROBE = """
import os
import sys


def copies(name: str) -> int:
    \"\"\"How many sealed copies of the library ``name`` this process holds.\"\"\"
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        found += link.startswith(f"/memfd:skyflow-plugin:{name}")
    return found


def main() -> int:
    gate = sys.stdout  # the launcher's stand-in, until its check has passed
    pinned = gate.check.pinned
    here = os.path.dirname(__file__)
    (bisect,) = [n for n in os.listdir(here) if n.startswith("_bisect.")]
    (heapq,) = [n for n in os.listdir(here) if n.startswith("_heapq.")]
    running = not gate.check.done.is_set()
    from skyflow_vault_plugin import _bisect  # the check has not started yet

    with open("/proc/self/maps") as maps:
        mapped = maps.read()
    report = [
        f"imported while the check ran: {running}",
        f"works: {_bisect.bisect_right([1, 2, 3], 2)}",
        f"mapped from sealed copy: {'memfd:skyflow-plugin:' + bisect in mapped}",
        f"mapped from path: {os.path.join(here, bisect) in mapped}",
    ]
    gate.check.wait()
    report += [
        f"bisect copies: {copies(bisect)}",
        f"bisect kept for an import: {any(p.endswith(bisect) for p in pinned.native)}",
        f"heapq copies before stdout: {copies(heapq)}",
        f"heapq kept for an import: {any(p.endswith(heapq) for p in pinned.native)}",
    ]
    print("\\n".join(report))  # opens the gate
    print(f"kept after stdout opened: {len(pinned.native)}; heapq copies: {copies(heapq)}")
    return 0
"""


def test_a_native_library_imported_before_the_check_reaches_it_is_read_once(
    tmp_path: Path, package_copy: Path
) -> None:
    import _bisect
    import _heapq

    for module in (_bisect, _heapq):  # _heapq: pinned, never imported
        extension = Path(str(module.__file__))
        shutil.copy2(extension, package_copy / extension.name)
    path = _launcher(
        tmp_path,
        package_copy,
        entry=NATIVE_PROBE,
        run_args=f"check_delays=({SLOW_CHECK}, 0)",
        distributions=[],
    )
    ran = _run(path, env={**os.environ, launcher.TIMING_ENV: "1"})
    assert ran.returncode == 0, ran.stderr
    # The import waited for the check's copy, held back before the native libraries.
    waited = ran.stderr.split("the imports ", 1)[1].split(" ms for its copies of native")[0]
    assert float(waited) >= 0.5 * SLOW_CHECK * 1000
    report = ran.stdout.splitlines()
    assert report == [
        "imported while the check ran: True",
        "works: 2",
        "mapped from sealed copy: True",
        "mapped from path: False",
        # The import hook read, hashed and loaded it; the check took its finding and kept no
        # second copy.
        "bisect copies: 1",
        "bisect kept for an import: False",
        # The check's copy of a library not imported yet waits for its import, until the
        # check has passed and stdout opened; then it is freed.
        "heapq copies before stdout: 1",
        "heapq kept for an import: True",
        "kept after stdout opened: 0; heapq copies: 0",
    ]


@pytest.mark.parametrize("separate_process", [True, False], ids=["child", "threads"])
def test_the_check_copies_the_smallest_native_library_first(
    tmp_path: Path, separate_process: bool
) -> None:
    # Manifest order is not size order: a large library listed first must not hold up the
    # small one an import asks for first.
    sizes = {"large.so": 300_000, "tiny.so": 3, "medium.so": 30_000}
    pinned_files = []
    for name, size in sizes.items():
        body = os.urandom(size)
        (tmp_path / name).write_bytes(body)
        pinned_files.append([0, name, hashlib.sha256(body).hexdigest(), None])
    manifest = _manifest(tmp_path, importlib.util.MAGIC_NUMBER + b"code", pinned_files)
    provided: list[str] = []

    class Recording(launcher.Pinned):
        def provide_native(self, path: str, copy: launcher.SealedCopy | None) -> None:
            provided.append(Path(path).name)
            super().provide_native(path, copy)

    files, _, fd = launcher.verify(
        Recording(manifest), workers=1, separate_process=separate_process
    )
    os.close(fd)
    assert files == 4
    assert provided == ["tiny.so", "medium.so", "large.so"]


def _small_manifest(tmp_path: Path) -> dict[str, object]:
    blob = importlib.util.MAGIC_NUMBER + b"code"
    names = [f"m{i:02d}.txt" for i in range(8)]
    for name in names:
        (tmp_path / name).write_text(name)
    pinned = [[0, name, hashlib.sha256(name.encode()).hexdigest(), None] for name in names]
    return _manifest(tmp_path, blob, pinned)


def test_the_check_runs_on_threads_where_no_process_can_be_forked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _small_manifest(tmp_path)

    def no_fork() -> int:
        raise PermissionError("fork is not allowed here")

    monkeypatch.setattr(os, "fork", no_fork)
    files, _, fd = launcher.verify(launcher.Pinned(manifest), separate_process=True)
    os.close(fd)
    assert files == 9
    (tmp_path / "m03.txt").write_text("changed")
    with pytest.raises(launcher.IntegrityError, match=r"m03\.txt changed since"):
        launcher.verify(launcher.Pinned(manifest), separate_process=True)


def test_a_check_process_that_dies_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _small_manifest(tmp_path)

    def killed(self: launcher.Check, copies: list[int], out: int) -> None:
        os._exit(9)

    monkeypatch.setattr(launcher.Check, "_child_main", killed)
    with pytest.raises(launcher.IntegrityError, match=r"ended without a verdict \(exit status 9\)"):
        launcher.verify(launcher.Pinned(manifest), separate_process=True)


# -- the lock file ---------------------------------------------------------------------------------

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PYPROJECT = LOCK.parent / "pyproject.toml"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """``{canonical name: (version, [sha256 hashes])}`` from requirements.lock."""
    import re

    from packaging.utils import canonicalize_name

    locked: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in LOCK.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if pinned:
            current = canonicalize_name(pinned.group(1))
            locked[current] = (pinned.group(2), [])
            continue
        digest = re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line)
        if digest:
            locked[current][1].append(digest.group(1))
        else:
            assert not line.strip() or line.lstrip().startswith("#"), f"unexpected: {line!r}"
    return locked


def test_the_lock_pins_exactly_the_runtime_dependencies_with_hashes() -> None:
    """CI's check that requirements.lock is current, without the network: it pins every
    runtime dependency (and nothing else) to a version pyproject allows, with hashes, and the
    test virtualenv (made from it by `make venv`) runs exactly those versions."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = _locked()
    assert all(hashes for _, hashes in locked.values()), "every pin needs --hash (make lock)"
    declared = [
        Requirement(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    ]
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is in pyproject but not in the lock: run `make lock`"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"the lock pins {name}=={version}, outside pyproject's {requirement}: `make lock`"
        )
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in runtime_distributions()
        if d.metadata["Name"] != "skyflow-vault-plugin"
    }
    assert installed == {name: version for name, (version, _) in locked.items()}, (
        "the runtime closure differs from requirements.lock: `make lock`, then `make venv`"
    )


def test_the_launcher_knows_the_host_cookie() -> None:
    """The launcher is standard library only, so it repeats the go-plugin cookie."""
    from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

    assert launcher.HOST_COOKIE == (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
