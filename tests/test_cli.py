"""The ``skyflow-vault-plugin`` command: plugin with no arguments, operator tool with some."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from skyflow_vault_plugin import __version__
from skyflow_vault_plugin.cli import main
from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY

SCRIPT = Path(sys.executable).parent / "skyflow-vault-plugin"


def test_no_arguments_outside_a_host_explains_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(MAGIC_COOKIE_KEY, raising=False)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "This binary is a plugin. These are not meant to be executed directly." in err
    assert "skyflow-vault-plugin install --plugin-dir" in err


def test_console_script_by_hand_has_no_traceback() -> None:
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "This binary is a plugin" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("argv", [["--version"], ["version"]])
def test_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"skyflow-vault-plugin v{__version__}"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert "install" in out
    assert "check" in out
    assert main(["install", "--help"]) == 0
    assert "--plugin-dir" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert main(["install"]) == 2  # --plugin-dir is required
    assert main(["install", "--plugin-dir", str(tmp_path), "--env", "NOEQUALS"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing"), "--runs", "0"]) == 2


def test_check_reports_a_file_that_does_not_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "not-a-plugin"
    script.write_text("#!/bin/sh\necho 'no plugin here' >&2\nexit 4\n")
    script.chmod(0o755)
    assert main(["check", str(script), "--runs", "1"]) == 1
    err = capsys.readouterr().err
    assert "did not start" in err
    assert "no plugin here" in err


def test_install_prints_the_sha256_and_commands_that_register_and_mount(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    done = subprocess.run(
        [
            str(SCRIPT),
            "install",
            "--plugin-dir",
            str(plugins),
            "--env",
            "SSL_CERT_FILE=/etc/ssl/skyflow ca.pem",
            "--env",
            "ENV=prod",
            "--mount",
            "skyflow/insurance",
            "--mount",
            "skyflow/lending",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    launcher = plugins / "skyflow"
    digest = hashlib.sha256(launcher.read_bytes()).hexdigest()
    lines = done.stdout.splitlines()
    assert f"sha256: {digest}" in lines
    commands = [shlex.split(line) for line in lines if line.startswith("  bao ")]
    commands += [shlex.split(line) for line in lines if line.startswith("  vault ")]
    assert [
        "bao",
        "write",
        "sys/plugins/catalog/secret/skyflow",
        f"sha256={digest}",
        "command=skyflow",
        "version=v0.1.0",
        "env=SSL_CERT_FILE=/etc/ssl/skyflow ca.pem",
        "env=ENV=prod",
    ] in commands
    for mount in ("skyflow/insurance", "skyflow/lending"):
        enable = ["bao", "secrets", "enable", f"-path={mount}", "-plugin-version=v0.1.0"]
        assert [*enable, "skyflow"] in commands
    assert ["bao", "plugin", "info", "-version=v0.1.0", "secret", "skyflow"] in commands
    assert [
        "vault",
        "plugin",
        "register",
        f"-sha256={digest}",
        "-command=skyflow",
        "-version=v0.1.0",
        "-env=SSL_CERT_FILE=/etc/ssl/skyflow ca.pem",
        "-env=ENV=prod",
        "secret",
        "skyflow",
    ] in commands

    check = subprocess.run(
        [str(SCRIPT), "check", str(launcher), "--runs", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert f"{launcher}: handshake after" in check.stdout
    assert "every pinned file matched" in check.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SKYFLOW_REQUEST_DEADLINE", "soon"),
        ("SKYFLOW_REQUEST_DEADLINE", "120"),
        ("SKYFLOW_TOKEN_CACHE_MAX_ENTRIES", "0"),
        ("SKYFLOW_TOKEN_CACHE_MAX_BYTES", "lots"),
    ],
)
def test_a_bad_engine_variable_stops_the_process_with_a_logged_error(
    variable: str, value: str
) -> None:
    """Not every mount's Setup later: the process exits at start, and says why in hclog
    JSON (which the server re-logs at error level)."""
    import json
    import os

    from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_VALUE

    env = dict(os.environ, **{MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE, variable: value})
    env["PLUGIN_PROTOCOL_VERSIONS"] = "5"
    done = subprocess.run(
        [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stdout == ""  # no handshake line
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines[-1]["@level"] == "error"
    assert variable in lines[-1]["@message"]
    assert "Traceback" not in done.stderr


# Stops the plugin at its handshake line and prints which of NOT_AT_START it had imported.
_AT_HANDSHAKE = """
import os
import sys

sys.path[:0] = {path!r}  # what the launcher puts there (run with -I -S: no site module)
NOT_AT_START = {names!r}


class Handshake:
    def write(self, text: str) -> int:
        if "|unix|" in text:
            sys.__stderr__.write(repr(sorted(n for n in NOT_AT_START if n in sys.modules)))
            sys.__stderr__.flush()
            os._exit(0)
        return len(text)

    def flush(self) -> None:
        pass


sys.stdout = Handshake()
from skyflow_vault_plugin.cli import main

main([])
"""


def test_the_plugin_start_does_not_import_what_only_commands_and_requests_need() -> None:
    """What the host waits for before its handshake: not the operator commands' argument
    parsing and paths, not the framework's error-path helpers, not ``tempfile`` (with
    ``shutil`` and its compression libraries) for the socket's directory, not the
    percent-encoding of gRPC error messages, not the engine's HTTP, JWT and telemetry
    libraries (it imports those at its first Setup), not protobuf's pure-Python messages
    where its C implementation makes them."""
    from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_VALUE
    from vault_plugin_sdk.plugin.tls import self_signed_certificate

    names = (
        "argparse",
        "pathlib",
        "difflib",
        "tempfile",
        "shutil",
        "urllib.parse",
        "httpx",
        "jwt",
        "opentelemetry",
        "google.protobuf.text_format",  # with python_message, unused under upb
        "cryptography.hazmat.backends.openssl.backend",  # ECDSA's constructor (ecdsa.py)
    )
    env = {
        "PATH": "/usr/bin:/bin",
        MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE,
        "PLUGIN_PROTOCOL_VERSIONS": "5",
        "PLUGIN_CLIENT_CERT": self_signed_certificate().cert_pem.decode(),
    }
    import sysconfig

    import skyflow_vault_plugin
    import vault_plugin_sdk

    path = [
        str(Path(skyflow_vault_plugin.__file__).parent.parent),
        str(Path(vault_plugin_sdk.__file__).parent.parent),
        sysconfig.get_path("purelib"),
    ]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _AT_HANDSHAKE.format(path=path, names=names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "[]"
