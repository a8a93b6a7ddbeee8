"""Signatures made with ``RandomNonceECDSA`` are ECDSA signatures cryptography verifies."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vault_plugin_sdk.plugin.ecdsa import RandomNonceECDSA


@pytest.mark.parametrize(
    ("curve", "digest"),
    [(ec.SECP256R1(), hashes.SHA256()), (ec.SECP521R1(), hashes.SHA512())],
)
def test_its_signatures_verify_as_ecdsa_with_a_fresh_nonce_each(
    curve: ec.EllipticCurve, digest: hashes.HashAlgorithm
) -> None:
    key = ec.generate_private_key(curve)
    data = b"to be signed"
    first = key.sign(data, RandomNonceECDSA(digest))
    second = key.sign(data, RandomNonceECDSA(digest))
    for signature in (first, second):
        key.public_key().verify(signature, data, ec.ECDSA(digest))
    assert first != second  # random nonces, as ec.ECDSA(digest) signs


def test_it_answers_what_ecdsa_answers() -> None:
    ours, theirs = RandomNonceECDSA(hashes.SHA256()), ec.ECDSA(hashes.SHA256())
    assert isinstance(ours, ec.ECDSA)
    assert isinstance(ours.algorithm, hashes.SHA256)
    assert ours.deterministic_signing is theirs.deterministic_signing is False


def test_signing_does_not_import_the_openssl_backend_module() -> None:
    code = (
        "import sys\n"
        "from cryptography.hazmat.primitives import hashes\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "from vault_plugin_sdk.plugin.ecdsa import RandomNonceECDSA\n"
        "key = ec.generate_private_key(ec.SECP256R1())\n"
        "key.sign(b'x', RandomNonceECDSA(hashes.SHA256()))\n"
        "print('cryptography.hazmat.backends.openssl.backend' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
