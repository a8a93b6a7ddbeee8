"""ECDSA signing with a random nonce, without cryptography's OpenSSL backend module.

``cryptography``'s ``ec.ECDSA`` constructor imports ``cryptography.hazmat.backends.openssl
.backend`` to check, when deterministic signing is asked for, that OpenSSL supports it. With
the modules it imports that is about 10 ms of a fresh process, the largest single part of
the plugin's first certificate (:mod:`.selfsigned`), and nothing else before the handshake
needs the module. Deterministic signing is never asked for here, so the check has nothing
to do.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["RandomNonceECDSA"]


class RandomNonceECDSA(ec.ECDSA):
    """``ec.ECDSA(algorithm)``, made without the constructor's backend import.

    An ``ECDSA`` to ``sign``'s type check, answering the two properties ``sign`` reads:
    ``algorithm``, and ``deterministic_signing`` (False: a random nonce, as
    ``ECDSA(algorithm)`` signs). ``tests/plugin/test_ecdsa.py`` verifies its signatures
    with cryptography's own ``ECDSA``.
    """

    def __init__(self, algorithm: hashes.HashAlgorithm) -> None:  # no super(): see above
        self._digest = algorithm

    @property
    def algorithm(self) -> hashes.HashAlgorithm:
        return self._digest

    @property
    def deterministic_signing(self) -> bool:
        return False
