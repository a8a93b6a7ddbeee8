"""HA: a three-node OpenBao cluster on integrated (raft) storage, all on 127.0.0.1.

The plugin is installed on every node (each runs plugins from its own directory) and
registered once through the leader; the mount is enabled and configured through the
leader. Then:

* creds are read through a standby's address;
* a config write through a standby makes one token exchange (the active node's validation),
  none on the standby, which finds its storage read-only before validating;
* a config change made through one node is honoured by the next creds read through another
  (the token's ``sub`` is the new account), and so is a role change (its ``scope``); a
  standby serves reads from its own raft copy, so "next" there means once that copy has
  applied the change (tens of milliseconds, measured);
* the leader is stopped (SIGTERM); later, with the old leader back, the new one is SIGKILLed
  (no hand-over): after each election creds are served through the new leader, and the
  config and roles are intact.

Timings are printed (``pytest -s``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from skyflow_devtools.client import BaoClient
from skyflow_devtools.cluster import OpenBaoCluster, install_plugin_cluster
from skyflow_devtools.openbao import OpenBaoServer
from skyflow_devtools.processes import poll_until
from skyflow_emulator.process import EmulatorProcess

from .conftest import PLUGIN_LAUNCHER, PLUGIN_NAME, error_text

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MOUNT = "skyflow/insurance"


def report(name: str, seconds: float) -> None:
    print(f"\nHA-TIMING {name}: {seconds:.2f} s")


@dataclass
class HA:
    cluster: OpenBaoCluster
    emulator: EmulatorProcess

    def node_client(self, node: OpenBaoServer) -> BaoClient:
        return node.client(self.cluster.root_token)


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HA]:
    work: Path = tmp_path_factory.mktemp("ha")
    emulator = EmulatorProcess(state_dir=work / "emulator").start()
    try:
        started = time.monotonic()
        cluster = OpenBaoCluster(work / "cluster", env=emulator.plugin_env())
        with cluster:
            report("three-node raft cluster up (all voters)", time.monotonic() - started)
            started = time.monotonic()
            install_plugin_cluster(cluster, name=PLUGIN_NAME, executable=PLUGIN_LAUNCHER)
            report(
                "plugin installed on 3 nodes, registered via the leader", time.monotonic() - started
            )
            yield HA(cluster, emulator)
    finally:
        emulator.stop()


def claims_of(response: Any) -> dict[str, Any]:
    token = response.json()["data"]["access_token"]
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def creds(client: BaoClient, role: str = "producer") -> Any:
    response = client.request("GET", f"{MOUNT}/creds/{role}")
    assert response.status_code == 200, f"{client.addr}: {error_text(response)}"
    return response


def wait_for_role(client: BaoClient) -> None:
    """A standby sets a new mount up a moment after the leader enabled it, and serves reads
    from its own raft copy, which applies the role written through the leader a moment
    later still (the mount's route can exist before the role does)."""

    def replicated() -> bool:
        return client.request("GET", f"{MOUNT}/roles/producer").status_code == 200

    poll_until(replicated, timeout=30, message=f"the mount and its role on {client.addr}")


def wait_for_version(client: BaoClient, version: int) -> float:
    """Wait until the node's plugin sees config ``version`` (a standby applies the leader's
    raft log asynchronously, then the plugin gets InvalidateKey); return the wait."""
    started = time.monotonic()

    def seen() -> bool:
        return bool(client.read(f"{MOUNT}/config")["data"]["version"] >= version)

    poll_until(seen, timeout=10, interval=0.02, message=f"config v{version} on {client.addr}")
    return time.monotonic() - started


def test_ha_cluster(ha: HA) -> None:
    cluster, admin = ha.cluster, ha.emulator.admin
    leader = cluster.leader()
    standbys = cluster.standbys()
    assert len(standbys) == 2
    on_leader = ha.node_client(leader)

    # register (done by the fixture), enable and configure through the leader
    first = admin.create_account("ha-first")
    started = time.monotonic()
    on_leader.enable_secrets(MOUNT, PLUGIN_NAME)
    on_leader.write(f"{MOUNT}/config", {"credentials_json": json.dumps(first)})
    on_leader.write(f"{MOUNT}/roles/producer", {"role_ids": ["producer-v1"]})
    report("enable + config + role through the leader", time.monotonic() - started)
    assert claims_of(creds(on_leader))["sub"] == first["clientID"]

    # creds through each standby's address, once the standby has set the new mount up and
    # applied the role
    for standby in standbys:
        started = time.monotonic()
        wait_for_role(ha.node_client(standby))
        claims = claims_of(creds(ha.node_client(standby)))
        report(f"first creds through standby {standby.node_id}", time.monotonic() - started)
        assert claims["sub"] == first["clientID"]
        assert claims["scope"] == ["producer-v1"]

    # A config change through a standby (forwarded to the leader) is honoured by the next
    # read through the leader. Standbys serve reads from their own raft copy, which applies
    # the change a moment later: once a node's plugin shows the new config version, the
    # very next creds read through that node must carry the new account (no stale token
    # survives the invalidation). Every node had a token for the first account cached.
    second = admin.create_account("ha-second")
    writer, other = standbys
    on_writer = ha.node_client(writer)
    version = on_writer.write(f"{MOUNT}/config", {"credentials_json": json.dumps(second)})["data"][
        "version"
    ]
    # The standby's plugin found its storage read-only before validating: only the active
    # node exchanged the new credentials (once), the standby made no token call.
    validations = admin.stats()["by_client"][second["clientID"]]["calls"]
    assert validations == 1, f"{validations} token calls validated one config write"
    assert claims_of(creds(on_leader))["sub"] == second["clientID"], "leader"
    for node in (other, writer):
        lag = wait_for_version(ha.node_client(node), version)
        report(f"config change visible on standby {node.node_id}", lag)
        assert claims_of(creds(ha.node_client(node)))["sub"] == second["clientID"], node.node_id

    # a role change through the leader, likewise through each standby
    on_leader.write(f"{MOUNT}/roles/producer", {"role_ids": ["producer-v2"]})
    for node in (other, writer):
        client = ha.node_client(node)

        def role_applied(client: BaoClient = client) -> bool:
            role = client.read(f"{MOUNT}/roles/producer")["data"]
            return bool(role["role_ids"] == ["producer-v2"])

        poll_until(role_applied, timeout=10, interval=0.02, message="the role change")
        assert claims_of(creds(client))["scope"] == ["producer-v2"], node.node_id

    # stop the leader: after the election creds are served through the new leader
    before = {
        "config": ha.node_client(other).read(f"{MOUNT}/config")["data"],
        "role": ha.node_client(other).read(f"{MOUNT}/roles/producer")["data"],
    }
    index = list(cluster.nodes).index(leader)
    started = time.monotonic()
    cluster.stop_node(index)
    stopped = time.monotonic()
    new_leader = cluster.wait_for_leader(exclude=leader, timeout=60)
    elected = time.monotonic()
    on_new = ha.node_client(new_leader)
    claims = claims_of(creds(on_new))
    served = time.monotonic()
    report("leader SIGTERM to stopped", stopped - started)
    report("leader stopped to new leader active", elected - stopped)
    report("new leader active to first creds", served - elected)
    assert claims["sub"] == second["clientID"]
    assert claims["scope"] == ["producer-v2"]
    assert on_new.read(f"{MOUNT}/config")["data"] == before["config"]
    assert on_new.read(f"{MOUNT}/roles/producer")["data"] == before["role"]

    # and a config change on the new leader reaches the remaining standby
    third = admin.create_account("ha-third")
    on_new.write(f"{MOUNT}/config", {"credentials_json": json.dumps(third)})
    version = on_new.read(f"{MOUNT}/config")["data"]["version"]
    remaining = next(n for n in cluster.nodes if n.running and n is not new_leader)
    wait_for_version(ha.node_client(remaining), version)
    assert claims_of(creds(ha.node_client(remaining)))["sub"] == third["clientID"]

    # the old leader comes back as a standby; then the new leader is SIGKILLed (no
    # hand-over): after the election creds are served through the one after it
    started = time.monotonic()
    cluster.start_node(index)
    report("old leader restarted and unsealed (standby)", time.monotonic() - started)
    killed = list(cluster.nodes).index(new_leader)
    started = time.monotonic()
    cluster.kill_node(killed)
    third_leader = cluster.wait_for_leader(exclude=new_leader, timeout=60)
    elected = time.monotonic()
    claims = claims_of(creds(ha.node_client(third_leader)))
    report("leader SIGKILLed to new leader active", elected - started)
    report("new leader active to first creds (after SIGKILL)", time.monotonic() - elected)
    assert claims["sub"] == third["clientID"]
    assert claims["scope"] == ["producer-v2"]
