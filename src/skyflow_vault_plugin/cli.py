"""The ``skyflow-vault-plugin`` executable.

With no arguments it is the plugin: Vault/OpenBao start it and talk to it over go-plugin.
With arguments it is the operator's tool::

    skyflow-vault-plugin install --plugin-dir DIR [--name skyflow] [--env K=V ...]
    skyflow-vault-plugin check DIR/skyflow [--runs 10]
    skyflow-vault-plugin --version
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from vault_plugin_sdk.framework import Backend, BackendConfig

PROG = "skyflow-vault-plugin"
# Process-wide settings the SDK's serve() leaves alone unless asked (see its docstring).
QUIET_LOGGERS = ("httpx", "httpcore")  # per-request client logs would flood the host's log

BY_HAND_MESSAGE = f"""\
This binary is a plugin. These are not meant to be executed directly.
Please execute the program that consumes these plugins, which will
load any plugins automatically.

{PROG} is a secrets engine for HashiCorp Vault and OpenBao that issues
short-lived Skyflow bearer tokens. To install it into a server's plugin directory and
print the commands that register it:

    {PROG} install --plugin-dir /etc/openbao/plugins

More: {PROG} --help
"""


async def _engine_factory(config: BackendConfig) -> Backend:
    # Imported on first Setup rather than at start: the handshake is not kept waiting on
    # the engine's dependencies (httpx, PyJWT, OpenTelemetry).
    from .skyflow.backend import factory

    return await factory(config)


def _version() -> str:
    from . import __version__

    return f"v{__version__}"


def _serve() -> int:
    from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        print(BY_HAND_MESSAGE, file=sys.stderr, end="")
        return 1
    from .skyflow.engine_env import EnvError, read_engine_env

    try:
        # Checked once here: a bad value stops the process with a line the server logs,
        # instead of failing every mount's Setup later.
        read_engine_env(os.environ)
    except EnvError as exc:
        _log_startup_error(f"the plugin cannot start: {exc}")
        return 1
    from vault_plugin_sdk.plugin import serve

    return serve(
        _engine_factory,
        version=_version(),
        log_to_host=True,
        quiet_loggers=QUIET_LOGGERS,
        no_core_dumps=True,
    )


def _log_startup_error(message: str) -> None:
    """One hclog JSON line at error level on stderr: the host re-logs it under the plugin's
    name (plain text would only show at debug level)."""
    import logging

    from vault_plugin_sdk.plugin.hclog import configure_logging

    configure_logging("error")
    logging.getLogger("skyflow").error(message)


def _parser() -> argparse.ArgumentParser:
    # Imported for the operator's commands only: the plugin's start (no arguments) does not
    # wait on them (argparse, gettext, pathlib and what pathlib imports: a few ms).
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "A HashiCorp Vault / OpenBao secrets engine that issues short-lived Skyflow bearer "
            "tokens. Run without arguments, it is the plugin (the server starts it)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    install = commands.add_parser(
        "install",
        help="put the plugin into a plugin directory and print how to register it",
        description=(
            "Write the plugin executable into the server's plugin_directory: a launcher that "
            "runs the Python this virtualenv was made from, with this virtualenv's packages, "
            "and refuses to start if the interpreter or any file it would import changed since "
            "this install. Prints its sha256 and the commands that register (with an explicit "
            "version), check and mount it."
        ),
    )
    install.add_argument(
        "--plugin-dir", required=True, type=Path, help="the server's plugin_directory"
    )
    install.add_argument(
        "--name", default="skyflow", help="catalog name and file name (default: skyflow)"
    )
    install.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the plugin, shown in the registration commands (repeatable), "
        "e.g. SKYFLOW_CA_FILE=/etc/ssl/skyflow-ca.pem or ENV=prod",
    )
    install.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="PATH",
        help="mount path for the printed `secrets enable` command (repeatable; "
        "default: skyflow/insurance)",
    )

    check = commands.add_parser(
        "check",
        help="start an installed plugin the way a server does and time its handshake",
        description=(
            "Start a plugin executable with a server's environment (magic cookie, protocol 5, "
            "a client certificate), wait for its handshake line, stop it; repeat. Shows "
            "whether it starts, how long that takes, and how long the launcher's integrity "
            "check took. No server needed."
        ),
    )
    check.add_argument("executable", type=Path, help="the installed plugin file")
    check.add_argument("--runs", type=int, default=5, help="how many starts (default: 5)")

    commands.add_parser("version", help="print the version")
    return parser


def _install(args: argparse.Namespace) -> int:
    from .install import InstallError, install

    try:
        result = install(args.plugin_dir, args.name, env=args.env)
    except InstallError as exc:
        print(f"{PROG} install: {exc}", file=sys.stderr)
        return 2
    print(result.instructions(args.mount or ["skyflow/insurance"]))
    return 0


def _check(args: argparse.Namespace) -> int:
    from .startup import StartupFailed, fake_host_environment, measure_startup, summarize

    if args.runs < 1:
        print(f"{PROG} check: --runs must be at least 1", file=sys.stderr)
        return 2
    path = args.executable.resolve()
    env = fake_host_environment()
    samples = []
    try:
        for _ in range(args.runs):
            samples.append(measure_startup([str(path)], env=env))
    except (StartupFailed, OSError) as exc:
        print(f"{PROG} check: {path} did not start: {exc}", file=sys.stderr)
        return 1
    stats = summarize(samples)
    print(
        f"{path}: handshake after {stats['handshake_median_ms']:.0f} ms "
        f"(median of {args.runs}; min {stats['handshake_min_ms']:.0f}, "
        f"max {stats['handshake_max_ms']:.0f})"
    )
    verify = stats["verify_median_ms"]
    if verify is not None:
        print(
            f"  integrity check: {verify:.0f} ms (median, alongside the imports); "
            "every pinned file matched"
        )
    else:
        print("  no integrity check reported: this is not a launcher written by `install`")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the plugin when started with no arguments; otherwise run an operator command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        return _serve()
    parser = _parser()
    try:
        parsed = parser.parse_args(args)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if parsed.command == "install":
        return _install(parsed)
    if parsed.command == "check":
        return _check(parsed)
    if parsed.command == "version":
        print(f"{PROG} {_version()}")
        return 0
    parser.print_help(sys.stderr)
    return 2
