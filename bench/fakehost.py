"""Play the host at start-up: the environment OpenBao gives a plugin, with a P-521 certificate."""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

COOKIE = ("VAULT_BACKEND_PLUGIN", "6669da05-b1c8-4f49-97d9-c8e5bed98e20")


def host_certificate_pem() -> str:
    """A self-signed P-521 certificate like go-plugin's automatic mTLS one."""
    key = ec.generate_private_key(ec.SECP521R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA512())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def host_env(cert_pem: str) -> dict[str, str]:
    """The variables the host adds for a v5 plugin with automatic mTLS."""
    env = dict(os.environ)
    env.update(
        {
            COOKIE[0]: COOKIE[1],
            "PLUGIN_PROTOCOL_VERSIONS": "5",
            "PLUGIN_CLIENT_CERT": cert_pem,
            "BAO_PLUGIN_AUTOMTLS_ENABLED": "true",
            "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true",
        }
    )
    return env


def time_to_handshake(command: Sequence[str], env: dict[str, str]) -> float:
    """Seconds from exec to the handshake line on stdout; the process is then stopped."""
    start = time.perf_counter()
    process = subprocess.Popen(
        list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        elapsed = time.perf_counter() - start
        if line.count(b"|") < 5:
            raise RuntimeError(f"no handshake line from {command}")
        return elapsed
    finally:
        process.terminate()
        process.wait(10)
