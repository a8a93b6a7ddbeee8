"""``skyflow-emulator``: run the emulator over HTTPS until SIGTERM/SIGINT.

When ready it prints one JSON line to stdout::

    {"url": "https://127.0.0.1:PORT", "ca_file": ".../ca.pem", "accounts": [".../account-1.json"],
     "pid": 1234}

``--port 0`` (the default) picks a free port; the line reports the real one.

With ``--state-dir`` the emulator keeps its CA, its token-signing key and its accounts
there, and a restart with the same directory loads them again: the same ``ca.pem``, the same
accounts (``account-<n>.json`` files are kept, not rewritten) and, with ``--port 0``, the
port it served last when that port is free, so that the accounts' ``tokenURI`` still points
at it. The ready line's ``"restored"`` says whether an earlier state was loaded. Without
``--state-dir`` everything lives in a temporary directory removed at exit. See README.md
next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn

from .accounts import create_service_account
from .app import create_app
from .state import DEFAULT_TOKEN_LIFETIME, EmulatorState, load_state
from .tls import CertificateAuthority, server_ssl_files, write_private

__all__ = ["main", "parse_args"]


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: it re-raises the signal after shutdown,
    which would end this process with an error status instead of a clean exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="skyflow-emulator", description="A local HTTPS Skyflow token endpoint."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the CA, the accounts and account files are kept across restarts "
        "(default: a temp dir removed at exit)",
    )
    parser.add_argument(
        "--accounts", type=int, default=0, help="service accounts to create at start"
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=DEFAULT_TOKEN_LIFETIME,
        help="lifetime of issued access tokens in seconds (default 3600)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.accounts < 0:
        parser.error("--accounts must not be negative")
    if args.token_lifetime < 1:
        parser.error("--token-lifetime must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


def _url(host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def _write_private(path: Path, content: str) -> None:
    # account files hold a (test) private key: owner-only, like a real credentials file
    write_private(path, content.encode("utf-8"))


def _listen(host: str, port: int, previous: int | None) -> socket.socket:
    """A listening socket: on ``port``, or for port 0 the port served last when it is free
    (the kept accounts' tokenURI names it), else any free port."""
    if port == 0 and previous:
        try:
            return socket.create_server((host, previous))
        except OSError:
            sys.stderr.write(
                f"skyflow-emulator: port {previous} (used last time) is taken; the kept "
                "accounts' tokenURI points at it, so clients must be given new credentials\n"
            )
    return socket.create_server((host, port))


def _kept_account_file(path: Path, state: EmulatorState) -> bool:
    """Whether ``path`` holds credentials of an account (and key) the state still knows."""
    try:
        creds = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(creds, dict) or not isinstance(creds.get("clientID"), str):
        return False
    account = state.accounts.get(creds["clientID"])
    return account is not None and account.public_key_for(creds.get("keyID")) is not None


async def _run(args: argparse.Namespace) -> int:
    own_dir = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="skyflow-emulator-")) if own_dir else args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return await _serve(args, state_dir.resolve())
    finally:
        if own_dir:
            shutil.rmtree(state_dir, ignore_errors=True)


async def _serve(args: argparse.Namespace, state_dir: Path) -> int:
    ca, kept_ca = CertificateAuthority.load_or_generate(state_dir)
    ca_file = state_dir / "ca.pem"
    server_cert = ca.issue_server(["127.0.0.1", "localhost", args.host])
    state = load_state(state_dir, token_lifetime=args.token_lifetime)
    restored = kept_ca and bool(state.accounts)

    sock = _listen(args.host, args.port, state.port)
    # Accepted connections inherit this: without it, a response written as headers then
    # body waits for the client's delayed ACK (about 40 ms) before the body leaves.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    url = _url(args.host, sock.getsockname()[1])

    state.port = sock.getsockname()[1]
    state.save()
    account_files = []
    for index in range(1, args.accounts + 1):
        path = state_dir / f"account-{index}.json"
        if not _kept_account_file(path, state):
            name = f"emulator-account-{index}"
            creds = create_service_account(state, base_url=url, client_name=name)
            _write_private(path, json.dumps(creds, indent=2) + "\n")
        account_files.append(str(path))

    with server_ssl_files(server_cert) as (cert_file, key_file):
        config = uvicorn.Config(
            create_app(state),
            lifespan="off",
            http="h11",
            log_level=args.log_level,
            access_log=False,
            server_header=False,
            ssl_certfile=cert_file,
            ssl_keyfile=key_file,
        )
        config.load()  # reads the key now; the temp files go when the block ends

    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, setattr, server, "should_exit", True)

    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return 1
        await asyncio.sleep(0.02)
    ready = {
        "url": url,
        "ca_file": str(ca_file),
        "accounts": account_files,
        "pid": os.getpid(),
        "restored": restored,
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    await task
    return 0
