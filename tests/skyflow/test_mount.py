"""Per-mount state that must be shared across the process, or kept per mount."""

from __future__ import annotations

from typing import Any

import pytest

from skyflow_vault_plugin.skyflow import mount as mount_module
from skyflow_vault_plugin.skyflow.mount import EngineSettings, MountState
from skyflow_vault_plugin.skyflow.trust import shared_tls_context
from vault_plugin_sdk.framework import BackendConfig
from vault_plugin_sdk.testing import InMemoryStorage


def test_mounts_share_one_tls_trust_store_but_not_a_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each mount has its own connection pool; the trust store (about a megabyte per
    context) is loaded once per process."""
    seen: list[Any] = []

    class RecordingClient:
        closed = False

        def __init__(self, *args: Any, verify: Any = None, **kwargs: Any) -> None:
            seen.append(verify)

    monkeypatch.setattr(mount_module, "TokenClient", RecordingClient)
    mounts = [
        MountState(BackendConfig(storage=InMemoryStorage()), EngineSettings()) for _ in range(2)
    ]
    clients = [mount.client() for mount in mounts]
    assert clients[0] is not clients[1]
    assert seen[0] is not None
    assert seen[0] is seen[1] is shared_tls_context()
