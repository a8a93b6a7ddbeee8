"""The public self-signed certificate helper: what go-plugin's automatic mTLS expects."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from vault_plugin_sdk.plugin.tls import self_signed_certificate


def test_a_host_certificate_is_p521_signed_with_sha512_for_localhost() -> None:
    made = self_signed_certificate(curve="P-521", valid_for=datetime.timedelta(hours=1))
    cert = x509.load_pem_x509_certificate(made.cert_pem)
    assert cert.public_bytes(serialization.Encoding.DER) == made.cert_der
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp521r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA512)
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=55) < lifetime <= datetime.timedelta(hours=1)


def test_the_plugin_default_is_p256_with_sha256_and_a_long_life() -> None:
    cert = x509.load_der_x509_certificate(self_signed_certificate().cert_der)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > datetime.timedelta(days=3000)


def test_the_key_pairs_with_the_certificate_and_stays_out_of_repr() -> None:
    made = self_signed_certificate()
    assert "key_pem" not in repr(made)
    assert "PRIVATE KEY" not in repr(made)
    key = serialization.load_pem_private_key(made.key_pem, password=None)
    cert = x509.load_pem_x509_certificate(made.cert_pem)
    assert key.public_key() == cert.public_key()
