"""The plugin process forbids core dumps, and its mTLS key never touches a disk."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vault_plugin_sdk.plugin import tls

PROBE = """
import json, resource
from vault_plugin_sdk.plugin.hardening import disable_core_dumps, is_dumpable
before = (resource.getrlimit(resource.RLIMIT_CORE)[0], is_dumpable())
assert disable_core_dumps() == []
after = (resource.getrlimit(resource.RLIMIT_CORE)[0], is_dumpable())
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_the_plugin_process_disables_core_dumps() -> None:
    """Run in a child process: the limit cannot be raised again in this one."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert seen["before"][1] is True  # a normal process is dumpable: the probe can tell
    assert seen["after"] == [0, False]


def test_serve_disables_core_dumps_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    serve_module = importlib.import_module("vault_plugin_sdk.plugin.serve")
    from vault_plugin_sdk.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

    calls: list[str] = []

    def fake_disable() -> list[str]:
        calls.append("disabled")
        raise SystemExit(0)  # stop before the handshake

    monkeypatch.setattr(serve_module, "disable_core_dumps", fake_disable)
    monkeypatch.setattr(serve_module.signal, "signal", lambda *args: None)
    env = {MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE, "PLUGIN_PROTOCOL_VERSIONS": "5"}
    with pytest.raises(SystemExit):
        serve_module.serve(lambda config: None, version="v0.0.1", env=env, no_core_dumps=True)
    assert calls == ["disabled"]


def test_the_mtls_key_is_never_written_to_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create on this platform: the private-directory fallback is used")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))

    def no_temp_dir(*args: object, **kwargs: object) -> None:
        raise AssertionError("the TLS key went through a temporary directory")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp_dir)
    host_cert_pem = tls.self_signed_certificate(curve="P-521").cert_pem
    before = set(os.listdir("/proc/self/fd"))
    built = tls.build_tls(host_cert_pem.decode())
    assert built.cert_der
    assert list(tmp_path.iterdir()) == []
    assert set(os.listdir("/proc/self/fd")) <= before  # the memory file is closed again
