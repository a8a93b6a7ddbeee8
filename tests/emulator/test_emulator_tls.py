"""The emulator's throw-away CA and server certificate."""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509

from skyflow_emulator.tls import CertificateAuthority, server_ssl_files


def test_server_certificate_is_signed_for_local_hosts(tmp_path: Path) -> None:
    ca = CertificateAuthority.generate()
    server = ca.issue_server(["127.0.0.1", "localhost", "emu.test"])
    cert = x509.load_pem_x509_certificate(server.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "emu.test"]
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "server_pem" not in repr(server)
    assert "PRIVATE" not in repr(server)

    ca_file = ca.write_cert(tmp_path / "ca.pem")
    assert b"PRIVATE" not in ca_file.read_bytes()
    client = ssl.create_default_context(cafile=str(ca_file))
    assert client.get_ca_certs()[0]["subject"]


def test_ssl_files_are_private_and_removed() -> None:
    server = CertificateAuthority.generate().issue_server()
    with server_ssl_files(server) as (cert_file, key_file):
        assert os.stat(key_file).st_mode & 0o077 == 0
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
    assert not os.path.exists(key_file)
    assert not os.path.exists(cert_file)
