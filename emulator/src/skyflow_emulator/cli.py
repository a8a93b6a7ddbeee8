"""``skyflow-emulator``: run the emulator over HTTPS until SIGTERM/SIGINT.

When ready it prints one JSON line to stdout::

    {"url": "https://127.0.0.1:PORT", "ca_file": ".../ca.pem", "accounts": [".../account-1.json"],
     "pid": 1234}

``--port 0`` (the default) picks a free port; the line reports the real one.
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
from .state import DEFAULT_TOKEN_LIFETIME, EmulatorState
from .tls import CertificateAuthority, server_ssl_files

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
        "--state-dir", type=Path, help="where ca.pem and account files go (default: a temp dir)"
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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)


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
    ca = CertificateAuthority.generate()
    ca_file = ca.write_cert(state_dir / "ca.pem")
    server_cert = ca.issue_server(["127.0.0.1", "localhost", args.host])

    sock = socket.create_server((args.host, args.port))
    # Accepted connections inherit this: without it, a response written as headers then
    # body waits for the client's delayed ACK (about 40 ms) before the body leaves.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    url = _url(args.host, sock.getsockname()[1])

    state = EmulatorState(token_lifetime=args.token_lifetime)
    account_files = []
    for index in range(1, args.accounts + 1):
        creds = create_service_account(state, base_url=url, client_name=f"emulator-account-{index}")
        path = state_dir / f"account-{index}.json"
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
    ready = {"url": url, "ca_file": str(ca_file), "accounts": account_files, "pid": os.getpid()}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    await task
    return 0
