"""Service accounts for the emulator, with credentials shaped exactly as Skyflow issues them."""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .state import Account, EmulatorState

__all__ = ["TOKEN_PATH", "create_service_account"]

TOKEN_PATH = "/v1/auth/sa/oauth/token"


def create_service_account(
    state: EmulatorState, *, base_url: str, client_name: str = "emulated-service-account"
) -> dict[str, str]:
    """Create an account in ``state`` and return its credentials JSON (as a dict).

    ``base_url`` is the emulator's ``https://host[:port]``; ``tokenURI`` points at its token
    endpoint. The private key (RSA 2048, PKCS#8 PEM) is generated now and kept only in the
    returned credentials; the emulator keeps the public key.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Skyflow's IDs are 32 lower-case hex characters
    client_id = uuid.uuid4().hex
    key_id = uuid.uuid4().hex
    token_uri = base_url.rstrip("/") + TOKEN_PATH
    state.add_account(
        Account(
            client_id=client_id,
            key_id=key_id,
            client_name=client_name,
            token_uri=token_uri,
            public_key=key.public_key(),
        )
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return {
        "clientID": client_id,
        "clientName": client_name,
        "tokenURI": token_uri,
        "keyID": key_id,
        "privateKey": pem,
    }
