"""Entries that hold a key never show it in their repr (reprs reach logs and tracebacks)."""

from __future__ import annotations

import json
from dataclasses import asdict

from skyflow_vault_plugin.skyflow.storage import ConfigEntry
from vault_plugin_sdk.framework import StorageEntry

MARKER = "-----BEGIN " + "PRIVATE KEY-----"  # built at run time, never a committed PEM
SECRET = MARKER + "c2VjcmV0LWtleS1tYXRlcmlhbA=="


def test_config_entry_repr_hides_the_credentials() -> None:
    config = ConfigEntry(
        credentials_type="json",
        credentials_json=json.dumps({"privateKey": SECRET}),
        client_id="client-1",
    )
    shown = repr(config)
    assert "client-1" in shown
    assert "c2VjcmV0" not in shown
    assert "PRIVATE" not in shown
    assert "privateKey" not in shown
    assert str(config) == shown


def test_storage_entry_repr_hides_the_value() -> None:
    config = ConfigEntry(credentials_type="json", credentials_json=SECRET)
    entry = StorageEntry.from_json("config", asdict(config), seal_wrap=True)
    shown = repr(entry)
    assert "c2VjcmV0" not in shown
    assert "PRIVATE" not in shown
    assert shown.startswith("StorageEntry(key='config', value=<")
    assert "seal_wrap=True" in shown
    assert entry == StorageEntry(entry.key, entry.value, True)  # equality still uses the value
