"""Tests of the OpenBao server harness: cheap checks, then a real server and cluster (``e2e``)."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyflow_devtools.catalog import install_plugin, reload_plugin
from skyflow_devtools.client import BaoError
from skyflow_devtools.cluster import OpenBaoCluster, install_plugin_cluster
from skyflow_devtools.openbao import OpenBaoServer, bao_binary, controlled_environment
from skyflow_devtools.processes import alive, plugin_pids, poll_until
from skyflow_devtools.sdk_example import KV_EXAMPLE, kv_example_launcher

# -- pieces, no server -------------------------------------------------------------------------


def test_bao_binary_is_the_real_go_binary() -> None:
    path = bao_binary()
    assert path.is_file()
    assert os.access(path, os.X_OK)
    # The venv's bin/bao is a Python wrapper; the real binary is an ELF file.
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_controlled_environment_keeps_basics_and_drops_strays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BAO_TOKEN", "leaked")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid")
    env = controlled_environment({"SSL_CERT_FILE": "/x/ca.pem"})
    assert env["PATH"] == os.environ["PATH"]
    assert env["SSL_CERT_FILE"] == "/x/ca.pem"
    assert "BAO_TOKEN" not in env
    assert "HTTPS_PROXY" not in env


# -- a real server -----------------------------------------------------------------------------


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[OpenBaoServer]:
    with OpenBaoServer.dev(tmp_path / "bao") as server:
        yield server


@pytest.mark.e2e
def test_dev_server_kv_roundtrip_and_clean_stop(tmp_path: Path) -> None:
    with OpenBaoServer.dev(tmp_path, audit_log=True) as bao:
        pid = bao.pid
        assert pid is not None
        client = bao.client()
        assert client.health()["initialized"] is True
        # The dev server mounts kv-v2 at secret/.
        client.write("secret/data/greeting", {"data": {"hello": "world"}})
        assert client.read("secret/data/greeting")["data"]["data"] == {"hello": "world"}
        assert client.list("secret/metadata") == ["greeting"]
        with pytest.raises(BaoError) as missing:
            client.read("secret/data/nothing")
        assert missing.value.status == 404

        # The config file's plugin_directory is in force next to the dev flags.
        state = client.read("sys/config/state/sanitized")["data"]
        assert state["plugin_directory"] == str(bao.plugin_dir)

        # The real CLI sees the same server through bao.env.
        done = bao.cli("kv", "get", "-format=json", "secret/greeting", check=True)
        assert json.loads(done.stdout)["data"]["data"] == {"hello": "world"}
        assert bao.env["VAULT_ADDR"] == bao.addr == bao.env["BAO_ADDR"]

        # A policy-limited token through the helpers.
        client.write_policy("reader", 'path "secret/data/*" { capabilities = ["read"] }')
        token = bao.client(client.create_token(["reader"]))
        assert token.read("secret/data/greeting")["data"]["data"]["hello"] == "world"
        with pytest.raises(BaoError) as denied:
            token.write("secret/data/greeting", {"data": {}})
        assert denied.value.status == 403

        client.enable_userpass()
        client.create_userpass_user("ann", "pw-ann", ["reader"])
        ann = bao.client(client.login_userpass("ann", "pw-ann"))
        assert ann.read("secret/data/greeting")["data"]["data"]["hello"] == "world"

        client.tune("secret", passthrough_request_headers=["traceparent"])
        tuned = client.read("sys/mounts/secret/tune")["data"]
        assert tuned["passthrough_request_headers"] == ["traceparent"]

        audit_log = bao.audit_log_path
        assert audit_log is not None
        assert audit_log.stat().st_size > 0
        assert bao.unseal_key
    assert not bao.running
    assert bao.pid is None
    assert not alive(pid)
    assert plugin_pids(bao) == []
    assert "harness: starting" in bao.log_path.read_text()


@pytest.mark.e2e
def test_raft_server_keeps_data_across_restart(tmp_path: Path) -> None:
    with OpenBaoServer.raft(tmp_path) as bao:
        assert bao.unseal_key
        first_pid = bao.pid
        client = bao.client()
        client.enable_secrets("kv", "kv", options={"version": "2"})
        # A new kv-v2 mount upgrades its storage layout for a moment before taking writes.
        poll_until(
            lambda: client.write("kv/data/a", {"data": {"n": "1"}}), timeout=15, message="kv"
        )

        bao.restart()
        assert bao.pid != first_pid
        assert bao.health()["sealed"] is False
        assert client.read("kv/data/a")["data"]["data"] == {"n": "1"}

        # Sealing and unsealing by hand works with the kept key.
        bao.seal()
        assert bao.health()["sealed"] is True
        bao.unseal()
        bao.wait_ready("active", timeout=30)
        assert client.read("kv/data/a")["data"]["data"] == {"n": "1"}
    assert not bao.running


@pytest.mark.e2e
def test_non_plugin_is_registered_but_cannot_be_mounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "must-not-leak")
    probe_env = tmp_path / "probe-env.txt"
    with OpenBaoServer.dev(tmp_path / "bao", env={"HARNESS_MARKER": "server"}) as bao:
        client = bao.client()
        # Not a plugin: records its environment when the server runs it, then fails.
        info = install_plugin(
            bao,
            name="dummy",
            executable=f"#!/bin/sh\nenv > {probe_env}\nexit 1\n".encode(),
            env={"CATALOG_MARKER": "catalog"},
        )
        assert info.path == bao.plugin_dir / "dummy"
        assert stat.S_IMODE(info.path.stat().st_mode) == 0o755
        # 2.7.2 accepts the entry (its version probe fails quietly) and stores no version.
        assert info.version is None
        entry = client.plugin_info("dummy")
        assert entry["sha256"] == info.sha256
        assert entry["command"] == "dummy"

        # The probe saw the server's controlled environment plus the catalog's env.
        seen = dict(
            line.split("=", 1) for line in probe_env.read_text().splitlines() if "=" in line
        )
        assert seen["HARNESS_MARKER"] == "server"
        assert seen["CATALOG_MARKER"] == "catalog"
        assert seen["BAO_VERSION"] == "2.7.2"
        assert "VAULT_TOKEN" not in seen

        with pytest.raises(BaoError) as failed:
            client.enable_secrets("dummy", "dummy")
        assert failed.value.status == 400
        assert "Unrecognized remote plugin message" in " ".join(failed.value.errors)

        # A checksum that does not match the file fails at mount time too.
        client.register_plugin("wrongsum", sha256="0" * 64, command="dummy")
        with pytest.raises(BaoError, match="checksums did not match"):
            client.enable_secrets("wrongsum", "wrongsum")
        # A command that is not in the plugin directory is refused at registration.
        with pytest.raises(BaoError) as missing:
            client.register_plugin("ghost", sha256="0" * 64, command="ghost")
        assert "no such file" in " ".join(missing.value.errors)
        with pytest.raises(BaoError) as unknown:
            reload_plugin(bao, "ghost")
        assert unknown.value.status == 400
        assert plugin_pids(bao) == []


@pytest.mark.e2e
def test_start_retries_when_the_chosen_port_is_taken(tmp_path: Path) -> None:
    server = OpenBaoServer.dev(tmp_path)
    taken = server.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", taken))
        with server:
            assert server.port != taken
            assert server.client().health()["sealed"] is False
    assert "address already in use" in server.log_path.read_text()


@pytest.mark.e2e
def test_sdk_example_plugin_installs_mounts_and_serves(dev_server: OpenBaoServer) -> None:
    client = dev_server.client()
    info = install_plugin(dev_server, name="example-kv", executable=kv_example_launcher())
    # Registered without a version: the catalog keeps the plugin's self-reported one.
    assert info.version == "v0.1.0"
    client.enable_secrets("ex", "example-kv")
    assert client.mounts()["ex/"]["running_plugin_version"] == "v0.1.0"

    client.write("ex/kv/alice", {"value": {"role": "admin"}})
    assert client.read("ex/kv/alice")["data"] == {"role": "admin"}
    assert client.list("ex/kv") == ["alice"]

    pids = plugin_pids(dev_server, "example-kv")
    assert len(pids) == 1
    reload_plugin(dev_server, "example-kv")
    poll_until(
        lambda: (p := plugin_pids(dev_server, "example-kv")) and p != pids,
        timeout=20,
        message="a new plugin process after reload",
    )
    assert client.read("ex/kv/alice")["data"] == {"role": "admin"}

    # SIGKILL of the server orphans the plugin; kill() reaps it.
    plugin_pid = plugin_pids(dev_server, "example-kv")[0]
    dev_server.kill()
    assert not alive(plugin_pid)
    assert plugin_pids(dev_server) == []


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cluster_forms_forwards_and_fails_over(tmp_path: Path) -> None:
    started = time.monotonic()
    with OpenBaoCluster(tmp_path) as cluster:
        formed = time.monotonic() - started
        leader = cluster.leader()
        standbys = cluster.standbys()
        assert len(standbys) == 2
        assert leader not in standbys
        assert all(s["voter"] for s in cluster.raft_servers())

        client = leader.client()
        client.enable_secrets("kv", "kv", options={"version": "2"})
        poll_until(
            lambda: client.write("kv/data/a", {"data": {"v": "1"}}), timeout=15, message="kv"
        )
        # A standby serves reads itself from its raft copy (possibly a moment behind) ...
        read = poll_until(
            lambda: standbys[0].client().read("kv/data/a"), timeout=15, message="standby read"
        )
        assert read["data"]["data"] == {"v": "1"}
        # ... and forwards writes to the active node: no redirect reaches the client.
        response = standbys[1].client().request("POST", "kv/data/b", json={"data": {"v": "2"}})
        assert response.status_code == 200
        assert client.read("kv/data/b")["data"]["data"] == {"v": "2"}

        if KV_EXAMPLE.is_file():
            # A plugin goes onto every node; each unsealed node runs its own process per mount.
            install_plugin_cluster(cluster, name="example-kv", executable=kv_example_launcher())
            assert all((n.plugin_dir / "example-kv").is_file() for n in cluster.nodes)
            client.enable_secrets("ex", "example-kv")
            client.write("ex/kv/alice", {"value": {"role": "admin"}})
            on_standby = poll_until(
                lambda: standbys[0].client().read("ex/kv/alice"), timeout=15, message="plugin"
            )
            assert on_standby["data"] == {"role": "admin"}
            assert plugin_pids(standbys[0], "example-kv")

        index = cluster.nodes.index(leader)
        cluster.stop_node(index)
        new_leader = cluster.wait_for_leader(exclude=leader, timeout=30)
        assert new_leader is not leader
        assert new_leader.client().read("kv/data/a")["data"]["data"] == {"v": "1"}
        assert new_leader.client().read("kv/data/b")["data"]["data"] == {"v": "2"}

        # The old leader comes back as a standby.
        cluster.start_node(index)
        assert cluster.node(index) in cluster.standbys()
    assert not any(node.running for node in cluster.nodes)
    assert formed < 60
