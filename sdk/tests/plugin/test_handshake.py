"""The handshake line and protocol negotiation."""

from __future__ import annotations

import base64

import pytest

from vault_plugin_sdk.plugin.handshake import (
    MAGIC_COOKIE_KEY,
    MAGIC_COOKIE_VALUE,
    NotAPluginHost,
    handshake_line,
    negotiate,
)


def test_line_has_six_fields_and_unpadded_base64_cert() -> None:
    der = b"\x30\x82" + b"x" * 301  # length not a multiple of 3: base64 would pad
    line = handshake_line(app_protocol=5, socket_path="/tmp/p/plugin.sock", server_cert_der=der)
    fields = line.split("|")
    assert fields[:5] == ["1", "5", "unix", "/tmp/p/plugin.sock", "grpc"]
    assert len(fields) == 6
    assert not fields[5].endswith("=")
    padded = fields[5] + "=" * (-len(fields[5]) % 4)
    assert base64.b64decode(padded) == der


def test_line_without_tls_has_an_empty_cert_field() -> None:
    assert handshake_line(app_protocol=5, socket_path="/s", server_cert_der=None).endswith("|grpc|")


def test_cookie_is_required() -> None:
    with pytest.raises(NotAPluginHost, match="not meant to be executed directly"):
        negotiate({})
    with pytest.raises(NotAPluginHost):
        negotiate({MAGIC_COOKIE_KEY: "wrong"})


def test_only_protocol_5_is_spoken() -> None:
    env = {MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE, "PLUGIN_PROTOCOL_VERSIONS": "4,3"}
    assert negotiate(env).app_protocol == 5
    env["PLUGIN_PROTOCOL_VERSIONS"] = "5"
    env["PLUGIN_CLIENT_CERT"] = "PEM"
    config = negotiate(env)
    assert (config.app_protocol, config.client_cert_pem) == (5, "PEM")
