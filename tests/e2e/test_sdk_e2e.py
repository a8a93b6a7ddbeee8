"""The SDK's example plugin inside a real OpenBao, installed as an operator would.

Registered by sha256 with the version the plugin reports; two mounts served by one
multiplexed process with isolated storage; CRUD, list, help, errors; reload, a killed
plugin, and a server restart on Raft storage with the data still there.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyflow_devtools.catalog import install_plugin, reload_plugin
from skyflow_devtools.client import BaoClient
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import plugin_pids
from skyflow_devtools.sdk_example import kv_example_launcher

pytestmark = pytest.mark.e2e

LAUNCHER = kv_example_launcher()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    with OpenBaoServer.dev(tmp_path_factory.mktemp("sdk-e2e")) as bao:
        install_plugin(bao, name="kvpy", executable=LAUNCHER)
        bao.client().enable_secrets("kva", "kvpy")
        bao.client().enable_secrets("kvb", "kvpy")
        yield bao


@pytest.fixture
def client(server: OpenBaoServer) -> BaoClient:
    return server.client()


def test_registered_with_the_self_reported_version(client: BaoClient) -> None:
    info = client.read("sys/plugins/catalog/secret/kvpy", params={"version": "v0.1.0"})
    assert info["data"]["version"] == "v0.1.0"
    mounts = client.request("GET", "sys/mounts").json()["data"]
    assert mounts["kva/"]["running_plugin_version"] == "v0.1.0"


def test_crud_list_and_isolation(client: BaoClient) -> None:
    client.write("kva/kv/alice", {"value": {"card": "4111"}})
    client.write("kvb/kv/zed", {"value": {"card": "5500"}})
    alice = client.read("kva/kv/alice")
    assert alice["data"] == {"card": "4111"}
    assert client.request("GET", "kvb/kv/alice").status_code == 404  # isolated storage
    assert client.list("kva/kv") == ["alice"]
    client.delete("kva/kv/alice")
    assert client.request("GET", "kva/kv/alice").status_code == 404


def test_two_mounts_share_one_multiplexed_process(server: OpenBaoServer) -> None:
    server.client().read("kva/info")
    server.client().read("kvb/info")
    assert len(plugin_pids(server, "kvpy")) == 1


def test_path_help(server: OpenBaoServer) -> None:
    result = server.cli("path-help", "kva/kv/alice")
    assert result.returncode == 0, result.stderr
    assert "Read and write one entry." in result.stdout
    assert "value (map)" in result.stdout


def test_openapi_lists_the_mounts_paths_fields_and_summaries(client: BaoClient) -> None:
    # The server asks each mount's root for help and merges its `openapi` paths (the UI and
    # client generators read this document).
    spec = client.request("GET", "sys/internal/specs/openapi").json()
    paths = spec["paths"]
    entry = paths["/kva/kv/{name}"]
    assert entry["description"] == "Read and write one entry."
    assert entry["parameters"][0]["name"] == "name"
    assert entry["parameters"][0]["in"] == "path"
    assert entry["parameters"][0]["schema"]["type"] == "string"
    assert entry["parameters"][0]["description"] == "Name of the entry."
    assert entry["get"]["summary"] == "Read an entry."
    assert entry["delete"]["summary"]
    body = entry["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["value"]["type"] == "object"
    assert body["properties"]["value"]["description"]
    assert "/kvb/kv/{name}" in paths
    assert paths["/kva/info"]["get"]["summary"] == "Describe the mount."


def test_error_codes(client: BaoClient) -> None:
    bad = client.request("PUT", "kva/kv/x", json={"value": "not an object"})
    assert bad.status_code == 400
    assert "'value'" in bad.json()["errors"][0]
    assert client.request("GET", "kva/kv/missing").status_code == 404
    unknown = client.request("GET", "kva/no/such/path")
    assert unknown.status_code == 404
    refused = client.request("DELETE", "kva/info")
    assert refused.status_code == 405
    # The host replaces the plugin's text with its own sentinel (as sdk.testing does).
    assert unknown.json()["errors"] == ["1 error occurred:\n\t* unsupported path\n\n"]
    assert refused.json()["errors"] == ["1 error occurred:\n\t* unsupported operation\n\n"]


def test_survives_reload(server: OpenBaoServer, client: BaoClient) -> None:
    client.write("kva/kv/reloaded", {"value": {"x": 1}})
    before = plugin_pids(server, "kvpy")
    reload_plugin(server, "kvpy")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = plugin_pids(server, "kvpy")
        if now and now != before:
            break
        time.sleep(0.2)
    entry = client.read("kva/kv/reloaded")
    assert entry["data"] == {"x": 1}
    assert plugin_pids(server, "kvpy") != before


def test_survives_a_killed_plugin(server: OpenBaoServer, client: BaoClient) -> None:
    client.write("kvb/kv/survivor", {"value": {"y": 2}})
    killed = plugin_pids(server, "kvpy")
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # A request racing the kill can meet the dead connection before the host notices
    # (500 "connection reset"); once the host has seen the exit it restarts the plugin.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in killed):
        time.sleep(0.05)
    time.sleep(0.5)
    entry = client.read("kvb/kv/survivor")  # the host restarts the plugin and retries
    assert entry["data"] == {"y": 2}


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_run_by_hand_explains_itself(server: OpenBaoServer) -> None:
    import subprocess

    launcher = server.plugin_dir / "kvpy"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    result = subprocess.run([str(launcher)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1
    assert "not meant to be executed directly" in result.stderr


@pytest.mark.slow
def test_data_survives_a_raft_restart(tmp_path: Path) -> None:
    with OpenBaoServer.raft(tmp_path / "raft") as bao:
        install_plugin(bao, name="kvpy", executable=LAUNCHER)
        client = bao.client()
        client.enable_secrets("kva", "kvpy")
        client.enable_secrets("kvb", "kvpy")
        client.write("kva/kv/alice", {"value": {"a": 1}})
        client.write("kvb/kv/zed", {"value": {"z": 26}})
        bao.restart()
        client = bao.client()
        alice = client.read("kva/kv/alice")
        zed = client.read("kvb/kv/zed")
        assert (alice["data"], zed["data"]) == ({"a": 1}, {"z": 26})
        assert client.request("GET", "kvb/kv/alice").status_code == 404
        # No error from Initialize on the standby pass: it does not write.
        assert "cannot write to readonly storage" not in bao.log_path.read_text()


@pytest.mark.slow
def test_writes_sent_to_a_standby_are_forwarded_to_the_active_node(tmp_path: Path) -> None:
    """A standby's plugin sees read-only storage; the SDK reports it with the text that
    makes the host forward the request to the active node instead of failing."""
    from skyflow_devtools.cluster import OpenBaoCluster, install_plugin_cluster

    with OpenBaoCluster(tmp_path / "cluster", log_level="info") as cluster:
        install_plugin_cluster(cluster, name="kvpy", executable=LAUNCHER)
        cluster.leader().client().enable_secrets("kva", "kvpy")
        standby = cluster.standbys()[0].client(cluster.root_token)
        deadline = time.monotonic() + 20
        while True:  # the mount reaches the standby through raft shortly after enabling
            response = standby.request("PUT", "kva/kv/through-standby", json={"value": {"n": 1}})
            if response.status_code == 204 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert response.status_code == 204, response.text
        entry = cluster.leader().client().read("kva/kv/through-standby")
        assert entry["data"] == {"n": 1}
