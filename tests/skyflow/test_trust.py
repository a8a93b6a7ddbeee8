"""SKYFLOW_CA_FILE: the trust store for Skyflow, shared by mounts and reloaded when it changes."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest

from skyflow_emulator.tls import CertificateAuthority
from skyflow_vault_plugin.skyflow import mount as mount_module
from skyflow_vault_plugin.skyflow.errors import SkyflowUntrusted
from skyflow_vault_plugin.skyflow.mount import EngineSettings, MountState
from skyflow_vault_plugin.skyflow.trust import CA_FILE_ENV, CHECK_INTERVAL, TrustStore
from vault_plugin_sdk.framework import BackendConfig
from vault_plugin_sdk.testing import InMemoryStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def subjects(context: ssl.SSLContext) -> list[str]:
    names = []
    for cert in context.get_ca_certs():
        subject: Any = cert["subject"]
        for rdn in subject:
            names += [value for key, value in rdn if key == "commonName"]
    return names


def write_ca(path: Path, name: str) -> None:
    # Through a temporary file and a rename, as configuration tools replace files.
    temp = path.with_suffix(".tmp")
    CertificateAuthority.generate(name).write_cert(temp)
    os.replace(temp, path)


def test_without_the_variable_the_default_store_is_loaded_once() -> None:
    store = TrustStore({})
    assert store.ca_file is None
    assert store.context() is store.context()
    assert "default CA store" in store.untrusted_summary()
    assert CA_FILE_ENV in store.untrusted_summary()


def test_the_bundle_replaces_the_default_store(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    write_ca(bundle, "private CA one")
    store = TrustStore({CA_FILE_ENV: str(bundle), "SSL_CERT_FILE": "/nonexistent"})
    # Only the bundle's CA: neither SSL_CERT_FILE nor the system's store is consulted.
    assert subjects(store.context()) == ["private CA one"]
    summary = store.untrusted_summary()
    assert f"{CA_FILE_ENV}={bundle}" in summary
    assert "retry" not in summary
    assert "validate_credentials" not in summary


def test_a_changed_bundle_is_picked_up_after_the_check_interval(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    write_ca(bundle, "before")
    clock = Clock()
    store = TrustStore({CA_FILE_ENV: str(bundle)}, clock=clock)
    first = store.context()

    clock.now += CHECK_INTERVAL  # unchanged file: the same context, no reload
    assert store.context() is first

    write_ca(bundle, "after")
    clock.now += CHECK_INTERVAL / 2  # not looked at yet
    assert store.context() is first
    clock.now += CHECK_INTERVAL / 2
    second = store.context()
    assert second is not first
    assert subjects(second) == ["after"]

    # An edit in place (same inode) is seen too, through size and mtime.
    bundle.write_bytes(CertificateAuthority.generate("in place").cert_pem)
    clock.now += CHECK_INTERVAL
    assert subjects(store.context()) == ["in place"]


def test_a_bundle_broken_after_loading_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tmp_path / "ca.pem"
    write_ca(bundle, "good")
    clock = Clock()
    store = TrustStore({CA_FILE_ENV: str(bundle)}, clock=clock)
    good = store.context()
    bundle.write_text("half written\n")
    caplog.set_level(logging.WARNING, logger="skyflow_vault_plugin.skyflow.trust")
    for _ in range(3):
        clock.now += CHECK_INTERVAL
        assert store.context() is good
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per problem, not once per request
    assert str(bundle) in warnings[0].getMessage()
    write_ca(bundle, "fixed")
    clock.now += CHECK_INTERVAL
    assert subjects(store.context()) == ["fixed"]


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_bundle_never_loadable_fails_with_its_name(tmp_path: Path, content: str | None) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    store = TrustStore({CA_FILE_ENV: str(bundle)})
    with pytest.raises(SkyflowUntrusted) as info:
        store.context()
    text = str(info.value)
    assert f"{CA_FILE_ENV}={bundle} cannot be loaded" in text
    assert ("No such file" in text) if content is None else ("no PEM certificates" in text)


async def test_a_mount_switches_to_a_new_client_when_trust_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contexts = [ssl.create_default_context(), ssl.create_default_context()]
    current = {"context": contexts[0]}
    monkeypatch.setattr(mount_module, "shared_tls_context", lambda: current["context"])
    seen: list[Any] = []

    class RecordingClient:
        def __init__(self, *args: Any, verify: Any = None, **kwargs: Any) -> None:
            seen.append(verify)
            self.closed = False

        async def aclose(self) -> None:
            self.closed = True

    monkeypatch.setattr(mount_module, "TokenClient", RecordingClient)
    mount = MountState(BackendConfig(storage=InMemoryStorage()), EngineSettings())
    first = mount.client()
    assert mount.client() is first
    current["context"] = contexts[1]
    second = mount.client()
    assert second is not first
    assert seen == contexts
    # The old pool serves exchanges already under way; it is closed after their deadline,
    # or at once when the mount goes away.
    assert not first.closed
    await mount.cleanup()
    assert first.closed
    assert second.closed
