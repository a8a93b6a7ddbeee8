"""The hand-assembled certificate is what ``cryptography.x509`` would build, byte for byte."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault_plugin_sdk.plugin import selfsigned


def _reference_tbs(
    key: ec.EllipticCurvePrivateKey,
    serial: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    digest: hashes.SHA256 | hashes.SHA512,
) -> bytes:
    """The certificate's fields as cryptography's own builder encodes them."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    usage = x509.KeyUsage(
        digital_signature=True,
        key_encipherment=True,
        key_cert_sign=True,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, digest)
    )
    return cert.tbs_certificate_bytes


@pytest.mark.parametrize(
    ("curve", "digest", "algorithm"),
    [
        (ec.SECP256R1(), hashes.SHA256(), selfsigned._ECDSA_WITH_SHA256),
        (ec.SECP521R1(), hashes.SHA512(), selfsigned._ECDSA_WITH_SHA512),
    ],
)
@pytest.mark.parametrize(
    ("serial", "years"),
    # short and long serials (a leading zero octet when the top bit is set); validity in
    # UTCTime and, past 2049, GeneralizedTime
    [(1, 1), (0x80, 10), (2**158 + 12345, 10), (2**159 - 1, 40)],
)
def test_the_signed_fields_match_cryptographys_builder(
    curve: ec.EllipticCurve,
    digest: hashes.SHA256 | hashes.SHA512,
    algorithm: bytes,
    serial: int,
    years: int,
) -> None:
    key = ec.generate_private_key(curve)
    not_before = datetime.datetime(2026, 12, 2, 16, 55, 7, tzinfo=datetime.UTC)
    not_after = not_before + datetime.timedelta(days=365 * years)
    public_key_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ours = selfsigned.tbs_certificate(
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        public_key_der=public_key_der,
        algorithm=algorithm,
    )
    assert ours == _reference_tbs(key, serial, not_before, not_after, digest)


@pytest.mark.parametrize("curve", ["P-256", "P-521"])
def test_the_certificate_verifies_with_its_own_key(curve: str) -> None:
    made = selfsigned.self_signed_certificate(curve=curve)  # type: ignore[arg-type]
    cert = x509.load_der_x509_certificate(made.cert_der)
    assert x509.load_pem_x509_certificate(made.cert_pem) == cert
    cert.verify_directly_issued_by(cert)  # the signature over the TBS bytes, self-issued
    assert made.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert all(len(line) <= 64 for line in made.cert_pem.splitlines())


@pytest.mark.parametrize("curve", ["P-256", "P-521"])
def test_the_key_and_its_public_half_are_encoded_as_cryptography_does(curve: str) -> None:
    made = selfsigned.self_signed_certificate(curve=curve)  # type: ignore[arg-type]
    key = serialization.load_pem_private_key(made.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert made.key_pem == key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The whole signed part, its SubjectPublicKeyInfo included, as the builder writes it.
    cert = x509.load_der_x509_certificate(made.cert_der)
    digest = hashes.SHA512() if curve == "P-521" else hashes.SHA256()
    reference = _reference_tbs(
        key, cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc, digest
    )
    assert cert.tbs_certificate_bytes == reference


def test_making_the_certificate_imports_neither_x509_nor_serialization() -> None:
    """The point of the module: the plugin's start pays for neither package, nor for the
    OpenSSL backend module (ecdsa.py)."""
    code = (
        "import sys\n"
        "from vault_plugin_sdk.plugin.tls import build_tls, self_signed_certificate\n"
        "build_tls(self_signed_certificate(curve='P-521').cert_pem.decode())\n"
        "print(sorted(m for m in sys.modules if m.startswith(\n"
        "    ('cryptography.x509', 'cryptography.hazmat.primitives.serialization',\n"
        "     'cryptography.hazmat.backends.openssl'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
