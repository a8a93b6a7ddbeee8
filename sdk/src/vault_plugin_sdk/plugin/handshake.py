"""The go-plugin handshake: magic cookie, protocol negotiation and the handshake line."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import NamedTuple

MAGIC_COOKIE_KEY = "VAULT_BACKEND_PLUGIN"
MAGIC_COOKIE_VALUE = "6669da05-b1c8-4f49-97d9-c8e5bed98e20"
CORE_PROTOCOL_VERSION = 1
# Only v5 (gRPC + automatic mTLS). Offering v4 without its unwrap-token TLS flow wedges the
# mount and then the server (plugin-protocol.md section 11).
APP_PROTOCOL_VERSION = 5

NOT_A_HOST_MESSAGE = """\
This binary is a plugin. These are not meant to be executed directly.
Please execute the program that consumes these plugins, which will
load any plugins automatically.

To install it, copy it into the plugin directory of Vault or OpenBao and register it, e.g.:

    bao plugin register -sha256=<sha256 of the file> -command=<file name> secret <name>
"""


class NotAPluginHost(Exception):
    """The process was not started by a Vault/OpenBao host (e.g. run by hand)."""


# A NamedTuple, not a dataclass: a dataclass compiles its methods when it is defined, 0.3 ms
# (0.6 ms when frozen) of every start (issue 12).
class HandshakeConfig(NamedTuple):
    """What the host asked for, read from the environment it set."""

    app_protocol: int
    client_cert_pem: str | None


def negotiate(env: Mapping[str, str]) -> HandshakeConfig:
    """Check the cookie and choose the protocol; raise :class:`NotAPluginHost` if not a host.

    The answer is always protocol v5, whatever ``PLUGIN_PROTOCOL_VERSIONS`` offers: a host
    that does not offer it then prints a clear "incompatible API version" error instead of
    hanging. Automatic mTLS is on exactly when the host sent ``PLUGIN_CLIENT_CERT``.
    """
    if env.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        raise NotAPluginHost(NOT_A_HOST_MESSAGE)
    cert = env.get("PLUGIN_CLIENT_CERT") or None
    return HandshakeConfig(app_protocol=APP_PROTOCOL_VERSION, client_cert_pem=cert)


def handshake_line(*, app_protocol: int, socket_path: str, server_cert_der: bytes | None) -> str:
    """``CORE|APP|unix|ADDRESS|grpc|CERT`` with the DER cert as unpadded base64."""
    cert = ""
    if server_cert_der is not None:
        cert = base64.b64encode(server_cert_der).decode().rstrip("=")
    return f"{CORE_PROTOCOL_VERSION}|{app_protocol}|unix|{socket_path}|grpc|{cert}"
