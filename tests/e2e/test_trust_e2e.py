"""A private CA on a host whose environment sets ``SSL_CERT_FILE`` (many enterprise hosts do).

The server runs with ``SSL_CERT_FILE`` pointing at a public CA bundle, the way it would when
started from such a host's shell. Measured on OpenBao 2.7.2: the server's environment wins
over the catalog ``env``, so ``SSL_CERT_FILE`` in the catalog cannot bring the emulator's CA
in; ``SKYFLOW_CA_FILE`` in the catalog does, because no server sets it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from skyflow_devtools.catalog import install_plugin, python_launcher
from skyflow_devtools.client import error_text
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import poll_until
from skyflow_emulator.process import EmulatorProcess
from skyflow_emulator.tls import CertificateAuthority
from skyflow_vault_plugin.install import install
from skyflow_vault_plugin.skyflow.trust import CHECK_INTERVAL

pytestmark = pytest.mark.e2e

PLUGIN_LAUNCHER = python_launcher("skyflow_vault_plugin.cli")


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OpenBaoServer, EmulatorProcess]]:
    work = tmp_path_factory.mktemp("trust-e2e")
    host_env = {"SSL_CERT_FILE": certifi.where()}  # the public CAs, not the emulator's
    with (
        EmulatorProcess(state_dir=work / "emulator") as emulator,
        OpenBaoServer.dev(work / "bao", env=host_env) as bao,
    ):
        yield bao, emulator


def hosts(emulator: EmulatorProcess) -> str:
    """The emulator's ``127.0.0.1:<port>``, the token host the plugin may call."""
    return emulator.plugin_env()["SKYFLOW_ALLOWED_TOKEN_HOSTS"]


def test_skyflow_ca_file_in_the_catalog_trusts_a_private_ca(
    servers: tuple[OpenBaoServer, EmulatorProcess],
) -> None:
    bao, emulator = servers
    # As docs/operations.md has it: install with the CA setting, run the printed command.
    installed = install(
        bao.plugin_dir,
        "skyflow",
        env=[
            f"SKYFLOW_CA_FILE={emulator.ca_file}",
            f"SKYFLOW_ALLOWED_TOKEN_HOSTS={hosts(emulator)}",
        ],
    )
    bao.cli(*installed.bao_register_argv()[1:], check=True)
    client = bao.client()
    client.enable_secrets("skyflow/insurance", "skyflow")
    account = emulator.admin.create_account("trust-e2e")
    # validate_credentials (the default) makes this write a real exchange over HTTPS.
    client.write("skyflow/insurance/config", {"credentials_json": json.dumps(account)})
    client.write("skyflow/insurance/roles/producer", {"role_ids": "r1"})
    data = client.read("skyflow/insurance/creds/producer")["data"]
    assert data["token_type"] == "Bearer"


def test_ssl_cert_file_in_the_catalog_loses_to_the_servers(
    servers: tuple[OpenBaoServer, EmulatorProcess],
) -> None:
    """The measurement behind docs/operations.md's precedence table, and the error a person
    then sees: it names SKYFLOW_CA_FILE, and does not advise a retry."""
    bao, emulator = servers
    install_plugin(
        bao,
        name="skyflow-sslcert",
        executable=PLUGIN_LAUNCHER,
        env={"SSL_CERT_FILE": emulator.ca_file, "SKYFLOW_ALLOWED_TOKEN_HOSTS": hosts(emulator)},
    )
    client = bao.client()
    client.enable_secrets("legacy", "skyflow-sslcert")
    account = emulator.admin.create_account("trust-e2e-legacy")
    response = client.request(
        "PUT", "legacy/config", json={"credentials_json": json.dumps(account)}
    )
    message = error_text(response, 503)
    assert "TLS certificate verification of Skyflow failed" in message
    assert "set SKYFLOW_CA_FILE" in message
    assert "retry" not in message
    assert "validate_credentials" not in message
    assert client.request("GET", "legacy/config").status_code == 404  # nothing stored


def test_a_changed_ca_file_is_picked_up_without_a_reload(
    servers: tuple[OpenBaoServer, EmulatorProcess], tmp_path: Path
) -> None:
    bao, emulator = servers
    bundle = tmp_path / "skyflow-ca.pem"
    CertificateAuthority.generate("not the emulator's CA").write_cert(bundle)
    install_plugin(
        bao,
        name="skyflow-reload",
        executable=PLUGIN_LAUNCHER,
        env={"SKYFLOW_CA_FILE": str(bundle), "SKYFLOW_ALLOWED_TOKEN_HOSTS": hosts(emulator)},
    )
    client = bao.client()
    client.enable_secrets("reload", "skyflow-reload")
    body = {"credentials_json": json.dumps(emulator.admin.create_account("trust-e2e-reload"))}
    message = error_text(client.request("PUT", "reload/config", json=body), 503)
    assert f"no CA in SKYFLOW_CA_FILE={bundle} signed its certificate" in message

    # The operator fixes the file in place; no plugin reload, no re-registration.
    shutil.copyfile(emulator.ca_file, bundle)
    started = time.monotonic()
    poll_until(
        lambda: client.request("PUT", "reload/config", json=body).status_code == 200,
        timeout=CHECK_INTERVAL + 10,
        interval=0.5,
        message="the config write after fixing the CA file",
    )
    assert time.monotonic() - started <= CHECK_INTERVAL + 10
