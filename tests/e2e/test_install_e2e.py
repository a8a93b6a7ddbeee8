"""The operator's path on a real OpenBao: ``skyflow-vault-plugin install``, then exactly the
commands it prints; registration mistakes and how to clean them up; installs that OpenBao
cannot start, and what the operator sees then.

The server runs at log level ``info`` (the default), so what the tests find in its log is
what an operator finds.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyflow_vault_plugin
from skyflow_devtools.client import BaoError
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import plugin_pids, poll_until
from skyflow_emulator import EmulatorProcess
from skyflow_vault_plugin.install import Installation, install

SCRIPT = Path(sys.executable).parent / "skyflow-vault-plugin"
PACKAGE = Path(skyflow_vault_plugin.__file__).resolve().parent
REAL_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
WRONG_SHA256 = "0" * 64
TROUBLESHOOTING = (
    (Path(__file__).resolve().parents[2] / "docs" / "operations.md")
    .read_text()
    .split("## Troubleshooting", 1)[1]
    .replace("&lt;", "<")
    .replace("&gt;", ">")
)


def documented(message: str) -> str:
    """``message``, after checking that docs/operations.md's troubleshooting table quotes it:
    the tests then find it in what the server or the CLI shows."""
    assert message in TROUBLESHOOTING, f"the troubleshooting table does not quote {message!r}"
    return message


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OpenBaoServer, EmulatorProcess]]:
    work = tmp_path_factory.mktemp("install-e2e")
    with (
        EmulatorProcess(state_dir=work / "emulator") as emulator,
        OpenBaoServer.dev(work / "bao", log_level="info") as bao,
    ):
        yield bao, emulator


def _printed_commands(stdout: str, cli: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith(f"  {cli} ")]


def _catalog_versions(bao: OpenBaoServer, name: str) -> list[str]:
    """The versions ``bao plugin list -detailed`` shows for ``name`` ("n/a": unversioned)."""
    listed = bao.cli("plugin", "list", "-detailed", "secret", check=True).stdout
    return sorted(line.split()[2] for line in listed.splitlines() if line.split()[:1] == [name])


def _copy_install(
    bao: OpenBaoServer, emulator: EmulatorProcess, tmp_path: Path, name: str, **kwargs: str
) -> tuple[Path, Installation]:
    """Install a copy of the package (so the test may tamper with it) and register it with
    the command ``install`` prints."""
    copy = tmp_path / "src" / "skyflow_vault_plugin"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    installed = install(
        bao.plugin_dir,
        name,
        package_dir=copy,
        env=emulator.plugin_env_entries(),
        **kwargs,  # type: ignore[arg-type]
    )
    bao.cli(*installed.bao_register_argv()[1:], check=True)
    return copy, installed


def _serve_tokens(bao: OpenBaoServer, emulator: EmulatorProcess, mount: str) -> None:
    client = bao.client()
    account = emulator.admin.create_account(f"{mount}-sa")
    client.write(f"{mount}/config", {"credentials_json": json.dumps(account)})
    client.write(f"{mount}/roles/r", {"role_ids": "r1"})
    assert client.read(f"{mount}/creds/r")["data"]["token_type"] == "Bearer"


def _logged(bao: OpenBaoServer, text: str) -> str:
    def found() -> str | None:
        log = bao.log_path.read_text(errors="replace")
        return log if text in log else None

    return poll_until(found, timeout=20, message=f"{text!r} in the server log")


@pytest.mark.e2e
def test_install_then_the_printed_commands_serve_tokens(
    servers: tuple[OpenBaoServer, EmulatorProcess],
) -> None:
    bao, emulator = servers
    done = subprocess.run(
        [
            str(SCRIPT),
            "install",
            "--plugin-dir",
            str(bao.plugin_dir),
            "--env",
            f"SKYFLOW_CA_FILE={emulator.ca_file}",
            "--env",
            f"SKYFLOW_ALLOWED_TOKEN_HOSTS={emulator.plugin_env()['SKYFLOW_ALLOWED_TOKEN_HOSTS']}",
            "--env",
            "ENV=dev",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    register, info, enable = _printed_commands(done.stdout, "bao")
    assert register[:3] == ["bao", "write", "sys/plugins/catalog/secret/skyflow"]
    assert "version=v0.1.0" in register
    assert info == ["bao", "plugin", "info", "-version=v0.1.0", "secret", "skyflow"]
    assert enable == [
        "bao",
        "secrets",
        "enable",
        "-path=skyflow/insurance",
        "-plugin-version=v0.1.0",
        "skyflow",
    ]
    shown = {}
    for argv in (register, info, enable):
        ran = bao.cli(*argv[1:])
        assert ran.returncode == 0, ran.stderr
        shown[argv[2]] = ran.stdout

    sha256 = register[3].removeprefix("sha256=")
    assert sha256 in shown["info"]  # what the printed check shows the operator
    entry = bao.client().plugin_info("skyflow", version="v0.1.0")
    assert entry["sha256"] == sha256
    assert entry["command"] == "skyflow"
    assert _catalog_versions(bao, "skyflow") == ["v0.1.0"]
    assert bao.client().mounts()["skyflow/insurance/"]["running_plugin_version"] == "v0.1.0"
    _serve_tokens(bao, emulator, "skyflow/insurance")

    # The plugin process is the launcher, run by the real interpreter (not the virtualenv's
    # bin/python link) in isolated mode.
    (pid,) = plugin_pids(bao, bao.plugin_dir / "skyflow")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:3] == [
        REAL_PYTHON.encode(),
        b"-IS",
        str(bao.plugin_dir / "skyflow").encode(),
    ]


@pytest.mark.e2e
def test_a_wrong_sha256_and_how_to_clean_it_up(
    servers: tuple[OpenBaoServer, EmulatorProcess], tmp_path: Path
) -> None:
    """No registration form refuses a wrong sha256 on OpenBao 2.7.2: the server runs the
    file to ask its version, logs the failure as a warning and stores the entry anyway. The
    versioned form ``install`` prints keeps the mistake on one entry, which registering the
    right sha256 replaces; the unversioned form leaves a second entry that only
    ``plugin deregister`` removes."""
    bao, emulator = servers
    _, installed = _copy_install(bao, emulator, tmp_path, "sky-reg")
    client = bao.client()

    # 1. The printed (versioned) form with a wrong sha256: accepted, one entry, warned in
    #    the log at the default level; enabling fails and names the cause.
    wrong = [
        f"sha256={WRONG_SHA256}" if a.startswith("sha256=") else a
        for a in installed.bao_register_argv()
    ]
    assert bao.cli(*wrong[1:]).returncode == 0
    assert _catalog_versions(bao, "sky-reg") == ["v0.1.0"]
    log = _logged(bao, "Error determining plugin version")
    assert "[WARN]" in log
    assert "checksums did not match" in log
    with pytest.raises(BaoError) as failed:
        client.enable_secrets("reg-a", "sky-reg", version="v0.1.0")
    assert failed.value.status == 400
    assert documented("checksums did not match") in " ".join(failed.value.errors)
    # Registering the right sha256 again fixes it.
    bao.cli(*installed.bao_register_argv()[1:], check=True)
    assert _catalog_versions(bao, "sky-reg") == ["v0.1.0"]
    assert WRONG_SHA256 not in bao.cli(*installed.info_argv()[1:], check=True).stdout
    client.enable_secrets("reg-a", "sky-reg", version="v0.1.0")

    # 2. The unversioned form with a wrong sha256 adds a second entry ("n/a"), which the
    #    next unversioned `secrets enable` picks, and which survives a correct registration.
    unversioned = ["write", "sys/plugins/catalog/secret/sky-reg", f"sha256={WRONG_SHA256}"]
    assert bao.cli(*unversioned, "command=sky-reg").returncode == 0
    assert _catalog_versions(bao, "sky-reg") == ["n/a", "v0.1.0"]
    enabled = bao.cli("secrets", "enable", "-path=reg-b", "sky-reg")
    assert enabled.returncode == 2
    assert "checksums did not match" in enabled.stderr
    bao.cli(*installed.bao_register_argv()[1:], check=True)
    assert _catalog_versions(bao, "sky-reg") == ["n/a", "v0.1.0"]
    # `plugin deregister` without -version removes exactly the unversioned entry.
    bao.cli("plugin", "deregister", "secret", "sky-reg", check=True)
    assert _catalog_versions(bao, "sky-reg") == ["v0.1.0"]
    bao.cli("secrets", "enable", "-path=reg-b", "sky-reg", check=True)
    _serve_tokens(bao, emulator, "reg-b")

    # 3. A versioned entry goes with -version (once no mount uses it).
    for mount in ("reg-a", "reg-b"):
        client.disable_secrets(mount)
    bao.cli("plugin", "deregister", "-version=v0.1.0", "secret", "sky-reg", check=True)
    assert _catalog_versions(bao, "sky-reg") == []


@pytest.mark.e2e
def test_an_absolute_command_is_refused(
    servers: tuple[OpenBaoServer, EmulatorProcess], tmp_path: Path
) -> None:
    """The rule docs/operations.md states: command is a file name inside plugin_directory."""
    bao, emulator = servers
    _, installed = _copy_install(bao, emulator, tmp_path, "sky-abs")
    absolute = [
        f"command={installed.path}" if a.startswith("command=") else a
        for a in installed.bao_register_argv()
    ]
    ran = bao.cli(*absolute[1:])
    assert ran.returncode == 2
    assert "Code: 500" in ran.stderr
    assert documented("error while validating the command path: lstat") in ran.stderr


@pytest.mark.e2e
def test_openbao_cannot_start_a_tampered_install_and_says_why(
    servers: tuple[OpenBaoServer, EmulatorProcess], tmp_path: Path
) -> None:
    bao, emulator = servers
    copy, installed = _copy_install(bao, emulator, tmp_path, "skyflow-copy")
    client = bao.client()
    bao.cli(*installed.enable_argv("copy")[1:], check=True)
    _serve_tokens(bao, emulator, "copy")

    # Someone edits an installed module; the running process is not affected, but the next
    # process the server starts (reload, crash, restart, new mount) refuses to run.
    target = copy / "skyflow" / "path_creds.py"
    target.write_text(target.read_text() + "\n# edited after install\n")
    reason = f"skyflow-vault-plugin: refusing to start: {target} changed since it was installed"
    with pytest.raises(BaoError) as reload_failed:
        client.reload_plugin("skyflow-copy")
    with pytest.raises(BaoError) as enable_failed:
        client.enable_secrets("copy2", "skyflow-copy")
    for failed in (reload_failed, enable_failed):
        assert failed.value.status == 400
        text = " ".join(failed.value.errors)
        # go-plugin quotes the first line the plugin wrote: the launcher's reason.
        assert documented("Unrecognized remote plugin message: skyflow-vault-plugin: refusing")
        assert f"Unrecognized remote plugin message: {reason}" in text
    # The CLI shows the same.
    enabled = bao.cli(*installed.enable_argv("copy3")[1:])
    assert enabled.returncode == 2
    assert f"Unrecognized remote plugin message: {reason}" in enabled.stderr

    # The server log, at its default level, has the launcher's reason as an error.
    log = _logged(bao, reason)
    lines = [x for x in log.splitlines() if reason in x]
    assert any("[ERROR]" in x and "fix=" in x and "skyflow-copy" in x for x in lines), lines
    # A mount that existed before the failed reload answers as if nothing were there: the
    # host has no backend for it (the CLI prints "No value found at copy/creds/r").
    with pytest.raises(BaoError) as read_failed:
        client.read("copy/creds/r")
    assert read_failed.value.status == 404
    shown = bao.cli("read", "copy/creds/r")
    assert documented("No value found at <path>")
    assert (shown.returncode, shown.stderr.strip()) == (2, "No value found at copy/creds/r")

    # Run by hand, the installed file says what is wrong.
    by_hand = subprocess.run(
        [str(installed.path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert by_hand.returncode == 3
    assert reason in by_hand.stderr


@pytest.mark.e2e
def test_a_pth_file_planted_next_to_the_interpreter_stops_the_plugin(
    servers: tuple[OpenBaoServer, EmulatorProcess], tmp_path: Path
) -> None:
    """The launcher checks the interpreter's identity before it imports anything from the
    standard library's directories."""
    bao, emulator = servers
    python = tmp_path / "py" / "bin" / Path(REAL_PYTHON).name
    python.parent.mkdir(parents=True)
    shutil.copy2(REAL_PYTHON, python)
    stdlib = subprocess.run(
        [str(python), "-IS", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    _, installed = _copy_install(bao, emulator, tmp_path, "sky-pth", python=str(python))
    bao.cli(*installed.enable_argv("pth")[1:], check=True)
    _serve_tokens(bao, emulator, "pth")

    extra = tmp_path / "planted"
    extra.mkdir()
    (python.parent / f"{python.name}._pth").write_text("\n".join([*stdlib, str(extra)]) + "\n")
    with pytest.raises(BaoError) as failed:
        bao.client().reload_plugin("sky-pth")
    text = " ".join(failed.value.errors)
    assert "refusing to start: the interpreter is not the one the plugin was installed with" in text
    assert "sys.path" in text
    log = _logged(bao, "the interpreter is not the one the plugin was installed with")
    assert any(
        "[ERROR]" in x and "python3.X._pth" in x and "sky-pth" in x for x in log.splitlines()
    )


# -- fresh production installs: reproducible, on every supported Python -----------------------

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
SUPPORTED = ("3.11", "3.12", "3.13")


def find_interpreter(version: str) -> str | None:
    """The real binary of Python ``version``: ``pythonX.Y`` on PATH if it runs (a pyenv shim
    only runs for an activated version), else the newest pyenv build; ``None`` if absent."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = sorted(
        root.glob(f"{version}.*/bin/python{version}"),
        key=lambda p: [int(x) for x in p.parent.parent.name.split(".") if x.isdigit()],
    )
    candidates = [shutil.which(f"python{version}"), *[str(b) for b in reversed(builds)]]
    for candidate in candidates:
        if candidate is None:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            return os.path.realpath(probe.stdout.strip())
    return None


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel from a copy of its sources (an in-tree build would write
    into the repository). The build prints no deprecation warning."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    # The plugin's wheel is built from the engine (src/) and the SDK it runs on (sdk/src/).
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    shutil.copytree(REPO / "sdk" / "src", source / "sdk" / "src", ignore=ignore)
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(work), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    output = built.stdout + built.stderr
    assert "BuildBackendWarning" not in output
    assert "deprecat" not in output.lower()
    (wheel,) = work.glob("skyflow_vault_plugin-*.whl")
    return wheel


def fresh_install(
    python: str, prefix: Path, plugins: Path, wheel: Path, name: str, *, compile: bool = False
) -> str:
    """The documented production install at ``prefix``; returns ``install``'s stdout.

    The virtualenv is made without pip and filled by this virtualenv's pip (``--python``):
    the same files as the venv's own pip would install, without a minute of ensurepip.
    pip byte-compiles what it installs only with ``compile`` (slower; the launcher never reads
    ``__pycache__``).
    """
    shutil.rmtree(prefix, ignore_errors=True)
    subprocess.run([python, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(prefix / "bin" / "python"), "install"]
    for args in (["--require-hashes", "-r", str(LOCK)], ["--no-deps", str(wheel)]):
        done = subprocess.run(
            [*pip, "-q", "--compile" if compile else "--no-compile", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    command = [str(prefix / "bin" / "skyflow-vault-plugin"), "install"]
    command += ["--plugin-dir", str(plugins), "--name", name, "--mount", f"{name}/unit"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def _serve_from_printed(
    printed: str, name: str, python: str, servers: tuple[OpenBaoServer, EmulatorProcess]
) -> None:
    """Register, mount, configure and mint with the commands ``install`` printed."""
    bao, emulator = servers
    assert f"runs {python} and pins" in printed
    register, _, enable = _printed_commands(printed, "bao")
    env = [f"env={entry}" for entry in emulator.plugin_env_entries()]
    bao.cli(*register[1:], *env, check=True)
    bao.cli(*enable[1:], check=True)
    _serve_tokens(bao, emulator, f"{name}/unit")
    (pid,) = plugin_pids(bao, bao.plugin_dir / name)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == python.encode()


def _sha256_of(stdout: str) -> str:
    (line,) = [x for x in stdout.splitlines() if x.startswith("sha256: ")]
    return line.removeprefix("sha256: ")


@pytest.mark.e2e
@pytest.mark.slow
def test_two_fresh_installs_from_the_lock_at_one_prefix_have_one_sha256(
    tmp_path: Path, project_wheel: Path, servers: tuple[OpenBaoServer, EmulatorProcess]
) -> None:
    """What makes an HA cluster work: every node installs at the same prefix from the same
    lock, and the launchers are byte for byte the same (pip's byte-code, RECORD and
    INSTALLER files, which may differ, are not pinned). Then the install serves tokens."""
    python = find_interpreter("3.11") or REAL_PYTHON
    prefix, plugins = tmp_path / "opt" / "skyflow", servers[0].plugin_dir
    first = fresh_install(python, prefix, plugins, project_wheel, "sky-node")
    launcher_bytes = (plugins / "sky-node").read_bytes()
    (plugins / "sky-node").unlink()
    # pip's byte-code (written only now) and its RECORD of it change nothing pinned.
    second = fresh_install(python, prefix, plugins, project_wheel, "sky-node", compile=True)
    assert list(prefix.glob("lib/python3*/site-packages/httpx/__pycache__/*.pyc"))
    assert _sha256_of(second) == _sha256_of(first)
    assert (plugins / "sky-node").read_bytes() == launcher_bytes
    _serve_from_printed(second, "sky-node", python, servers)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("version", [v for v in SUPPORTED if v != "3.11"])
def test_fresh_install_serves_tokens_on_each_supported_python(
    version: str,
    servers: tuple[OpenBaoServer, EmulatorProcess],
    tmp_path: Path,
    project_wheel: Path,
) -> None:
    """3.11 runs the test above; these are the others the README lists."""
    python = find_interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version}: not on PATH as python{version}, not under pyenv")
    name = f"sky-py{version.replace('.', '')}"
    printed = fresh_install(python, tmp_path / "venv", servers[0].plugin_dir, project_wheel, name)
    _serve_from_printed(printed, name, python, servers)
