"""Free ports on 127.0.0.1."""

from __future__ import annotations

import socket

from skyflow_devtools.ports import free_port, free_port_pair, free_ports


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_free_port_pair_gives_two_adjacent_bindable_ports() -> None:
    port = free_port_pair()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second,
    ):
        first.bind(("127.0.0.1", port))
        second.bind(("127.0.0.1", port + 1))
