"""Service accounts for the emulator, with credentials shaped exactly as Skyflow issues them."""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .state import Account, EmulatorState

__all__ = ["TOKEN_PATH", "create_service_account", "rotate_key"]

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
    account = Account(
        client_id=uuid.uuid4().hex,
        key_id=uuid.uuid4().hex,
        client_name=client_name,
        token_uri=base_url.rstrip("/") + TOKEN_PATH,
        public_key=key.public_key(),
    )
    state.add_account(account)
    return _credentials(account, key)


def rotate_key(state: EmulatorState, client_id: str) -> dict[str, str]:
    """Give the account ``client_id`` a new key, as Skyflow's "new key" does: same clientID,
    new keyID and private key. The old key keeps verifying until it is revoked
    (:meth:`.state.Account.without_key`). Raises KeyError for an unknown client ID."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = state.accounts[client_id].with_new_key(uuid.uuid4().hex, key.public_key())
    state.add_account(account)
    return _credentials(account, key)


def _credentials(account: Account, key: rsa.RSAPrivateKey) -> dict[str, str]:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return {
        "clientID": account.client_id,
        "clientName": account.client_name,
        "tokenURI": account.token_uri,
        "keyID": account.key_id,
        "privateKey": pem,
    }
