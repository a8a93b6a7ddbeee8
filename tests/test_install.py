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
from importlib import metadata
from pathlib import Path

import pytest

import skyflow_vault_plugin
import vault_plugin_sdk
from skyflow_vault_plugin import launcher
from skyflow_vault_plugin.install import (
    InstallError,
    StartupFailed,
    _requirement_name,
    collect_files,
    fake_host_environment,
    install,
    measure_startup,
    parse_env,
    render_launcher,
    runtime_distributions,
)

PACKAGE = Path(skyflow_vault_plugin.__file__).resolve().parent


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


# -- the launcher in-process -----------------------------------------------------------------------


def test_verify_names_a_changed_or_missing_file(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    code = marshal.dumps(compile(module.read_bytes(), str(module), "exec"))
    blob = importlib.util.MAGIC_NUMBER + code
    (tmp_path / "bc").write_bytes(blob)
    manifest = {
        "format": launcher.FORMAT,
        "entry": "m:main",
        "magic": importlib.util.MAGIC_NUMBER.hex(),
        "path": [str(tmp_path)],
        "bytecode": {"file": str(tmp_path / "bc"), "sha256": hashlib.sha256(blob).hexdigest()},
        "files": [
            [0, "m.py", hashlib.sha256(module.read_bytes()).hexdigest(), [4, len(code), "x"]]
        ],
    }
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
    assert first_line == f"#!{sys.executable} -IS"
    assert result.files > 500  # the package and its dependencies

    sample = measure_startup([str(result.path)], env=host_env)
    assert sample.line.startswith("1|5|unix|")
    assert sample.verify_ms is not None
    assert sample.verify_ms > 0

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
        "env=SSL_CERT_FILE=/etc/ca.pem"
    ) in text
    assert (
        f"vault plugin register -sha256={result.sha256} -command=sky "
        "-env=SSL_CERT_FILE=/etc/ca.pem secret sky"
    ) in text
    assert "bao secrets enable -path=skyflow/insurance sky" in text
    assert "bao secrets enable -path=skyflow/lending sky" in text
    literal = result.path.read_text().split("\nMANIFEST = ", 1)[1].split("\n", 1)[0]
    manifest = json.loads(ast.literal_eval(literal))
    assert manifest["entry"] == "skyflow_vault_plugin.cli:main"
    assert manifest["path"][0] == str(package_copy.parent)
