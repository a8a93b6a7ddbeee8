"""Free TCP ports on 127.0.0.1 for servers the harness starts (the usual bind-to-0 race applies:
a port is free when chosen, not necessarily when the server binds it)."""

from __future__ import annotations

import socket

from .client import ServerError

__all__ = ["free_port", "free_port_pair", "free_ports"]


def _bind_free_port(sock: socket.socket, port: int = 0) -> int:
    sock.bind(("127.0.0.1", port))
    return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports; all sockets stay open until every port is chosen."""
    sockets: list[socket.socket] = []
    try:
        ports: list[int] = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            ports.append(_bind_free_port(sock))
        return ports
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual bind-to-0 race applies)."""
    return free_ports(1)[0]


def free_port_pair() -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` are both free (dev mode's cluster port).

    Raises:
        ServerError: no such pair after 100 attempts.
    """
    for _ in range(100):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second,
        ):
            port = _bind_free_port(first)
            if port >= 65535:
                continue
            try:
                _bind_free_port(second, port + 1)
            except OSError:
                continue
            return port
    raise ServerError("no pair of adjacent free ports on 127.0.0.1 after 100 attempts")
