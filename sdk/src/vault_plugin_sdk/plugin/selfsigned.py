"""A fresh self-signed ECDSA certificate for ``localhost``, encoded without ``cryptography.x509``.

go-plugin's automatic mTLS needs one such certificate per plugin process, made before the
handshake line. ``cryptography.x509`` would build it, but importing it costs about 35 ms,
a fifth of the plugin's whole start on a quiet machine (``-X importtime``), for one
certificate whose layout never changes. So the certificate is assembled here from DER
pieces: everything but the serial number, the validity and the public key is a constant.
The key is made, and the certificate signed, by ``cryptography``'s EC primitives; the
layout is what ``cryptography.x509.CertificateBuilder`` writes for the same fields, and the
key's encodings (its public key in the certificate, the PKCS#8 private key) are what
cryptography's serialization writes (``tests/plugin/test_selfsigned.py`` compares them byte
for byte, and every end-to-end test has the host's Go TLS stack verify the certificate).
"""

from __future__ import annotations

import base64
import datetime
import secrets
from typing import Literal, NamedTuple

__all__ = ["SelfSignedCertificate", "self_signed_certificate"]


# A NamedTuple, not a dataclass: a dataclass compiles its methods when it is defined, 0.3 ms
# (0.6 ms when frozen) of every start (issue 12).
class SelfSignedCertificate(NamedTuple):
    """A fresh self-signed ECDSA certificate for ``localhost`` and its private key.

    Attributes:
        cert_pem: the certificate, PEM.
        cert_der: the certificate, DER.
        key_pem: the private key, unencrypted PKCS#8 PEM (kept out of ``repr``: a key must
            never reach a log).
    """

    cert_pem: bytes
    cert_der: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return f"SelfSignedCertificate(cert_pem={self.cert_pem!r}, cert_der={self.cert_der!r})"


def self_signed_certificate(
    *,
    curve: Literal["P-256", "P-521"] = "P-256",
    valid_for: datetime.timedelta = datetime.timedelta(days=3650),
) -> SelfSignedCertificate:
    """A self-signed certificate for ``localhost``, its own CA, for TLS server and client use.

    The kind go-plugin's automatic mTLS uses on both sides: the plugin's own is P-256 (signed
    with SHA-256, cheap to generate at start-up); a host's is P-521 (signed with SHA-512), so
    tests and tools that play the host ask for ``curve="P-521"``.

    Extensions: basic constraints (CA, critical), key usage (digital signature, key
    encipherment, key agreement, certificate signing; critical), extended key usage (client
    and server authentication) and the subject alternative name ``DNS:localhost``.

    Args:
        curve: the ECDSA curve of the key.
        valid_for: how long the certificate is valid from now (it is also backdated a few
            minutes, for clocks that differ slightly).
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from .ecdsa import RandomNonceECDSA

    if curve == "P-521":
        key = ec.generate_private_key(ec.SECP521R1())
        digest: hashes.SHA256 | hashes.SHA512 = hashes.SHA512()
        algorithm, curve_oid, size = _ECDSA_WITH_SHA512, _SECP521R1, 66
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        digest = hashes.SHA256()
        algorithm, curve_oid, size = _ECDSA_WITH_SHA256, _PRIME256V1, 32
    # The key's encodings are assembled here too: ``private_bytes`` would import
    # cryptography's serialization package (its SSH key support among it), about 3 ms of the
    # plugin's start, for two fixed layouts (the tests compare them with cryptography's).
    private = key.private_numbers()
    public = private.public_numbers
    point = b"\x04" + public.x.to_bytes(size, "big") + public.y.to_bytes(size, "big")
    key_algorithm = _sequence(_EC_PUBLIC_KEY + curve_oid)
    now = datetime.datetime.now(datetime.UTC)
    tbs = tbs_certificate(
        serial=random_serial_number(),
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + valid_for,
        public_key_der=_sequence(key_algorithm + _bit_string(point)),  # SubjectPublicKeyInfo
        algorithm=algorithm,
    )
    signature = key.sign(tbs, RandomNonceECDSA(digest))  # ec.ECDSA(digest), 10 ms sooner
    cert_der = _sequence(tbs + algorithm + _bit_string(signature))
    # PKCS#8 PrivateKeyInfo around an RFC 5915 ECPrivateKey (its curve named once, outside).
    ec_private_key = _sequence(
        _integer(1)
        + _tlv(0x04, private.private_value.to_bytes(size, "big"))
        + _tlv(0xA1, _bit_string(point))
    )
    pkcs8 = _sequence(_integer(0) + key_algorithm + _tlv(0x04, ec_private_key))
    return SelfSignedCertificate(
        cert_pem=_pem("CERTIFICATE", cert_der),
        cert_der=cert_der,
        key_pem=_pem("PRIVATE KEY", pkcs8),
    )


def random_serial_number() -> int:
    """A positive serial of up to 159 random bits (RFC 5280 allows up to 20 octets)."""
    return secrets.randbits(159) or 1


def tbs_certificate(
    *,
    serial: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    public_key_der: bytes,
    algorithm: bytes,
) -> bytes:
    """The DER ``TBSCertificate`` of the certificate :func:`self_signed_certificate` signs.

    ``public_key_der`` is a DER ``SubjectPublicKeyInfo``; ``algorithm`` the DER
    ``AlgorithmIdentifier`` of the signature.
    """
    return _sequence(
        _VERSION_3
        + _integer(serial)
        + algorithm
        + _LOCALHOST_NAME  # issuer: self-signed
        + _sequence(_time(not_before) + _time(not_after))
        + _LOCALHOST_NAME  # subject
        + public_key_der
        + _EXTENSIONS
    )


# -- DER (X.690) --------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def _sequence(content: bytes) -> bytes:
    return _tlv(0x30, content)


def _integer(value: int) -> bytes:
    # Two's complement, minimal, positive: a leading zero octet when the top bit is set.
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _bit_string(content: bytes) -> bytes:
    return _tlv(0x03, b"\x00" + content)  # no unused bits


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(part) for part in dotted.split("."))
    body = bytearray()
    for arc in (40 * first + second, *rest):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | arc & 0x7F)
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _time(moment: datetime.datetime) -> bytes:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; seconds, in UTC.
    moment = moment.astimezone(datetime.UTC)
    if moment.year < 2050:
        return _tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, moment.strftime("%Y%m%d%H%M%SZ").encode())


def _pem(label: str, der: bytes) -> bytes:
    # RFC 7468: base64 in lines of 64 characters between the labels.
    text = base64.b64encode(der)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"\n".join(
        [f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----\n".encode()]
    )


def _extension(oid: str, value: bytes, *, critical: bool) -> bytes:
    flag = _tlv(0x01, b"\xff") if critical else b""
    return _sequence(_oid(oid) + flag + _tlv(0x04, value))


_VERSION_3 = _tlv(0xA0, _integer(2))  # [0] EXPLICIT Version: v3 is 2
_ECDSA_WITH_SHA256 = _sequence(_oid("1.2.840.10045.4.3.2"))
_ECDSA_WITH_SHA512 = _sequence(_oid("1.2.840.10045.4.3.4"))
_EC_PUBLIC_KEY = _oid("1.2.840.10045.2.1")  # id-ecPublicKey
_PRIME256V1 = _oid("1.2.840.10045.3.1.7")  # P-256
_SECP521R1 = _oid("1.3.132.0.35")  # P-521
# Name: CN=localhost, a UTF8String as cryptography writes it.
_LOCALHOST_NAME = _sequence(_tlv(0x31, _sequence(_oid("2.5.4.3") + _tlv(0x0C, b"localhost"))))
_EXTENSIONS = _tlv(
    0xA3,  # [3] EXPLICIT Extensions
    _sequence(
        # basicConstraints: cA TRUE, no path length
        _extension("2.5.29.19", _sequence(_tlv(0x01, b"\xff")), critical=True)
        # keyUsage: digitalSignature (bit 0), keyEncipherment (2), keyAgreement (4),
        # keyCertSign (5) = 0b10101100, two unused bits
        + _extension("2.5.29.15", _tlv(0x03, b"\x02\xac"), critical=True)
        # extKeyUsage: clientAuth, serverAuth
        + _extension(
            "2.5.29.37",
            _sequence(_oid("1.3.6.1.5.5.7.3.2") + _oid("1.3.6.1.5.5.7.3.1")),
            critical=False,
        )
        # subjectAltName: dNSName [2] localhost
        + _extension("2.5.29.17", _sequence(_tlv(0x82, b"localhost")), critical=False)
    ),
)
