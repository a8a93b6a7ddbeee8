"""A three-node OpenBao cluster on integrated storage, all on 127.0.0.1.

Every node is an :class:`~skyflow_devtools.openbao.OpenBaoServer` in raft mode with
a plain-HTTP API listener and ``retry_join`` blocks pointing at the other nodes (raft's cluster
port uses its own internal TLS). Node 0 is initialised (one key share) and unseals first; the
others find it through ``retry_join``, are unsealed with the same key and join as standbys.

How OpenBao 2.7.2 treats requests sent to a *standby's* address (observed):

* Writes are forwarded to the active node over the cluster port (request forwarding): the
  standby answers the client itself, e.g. ``200``, with no redirect.
* Reads are served by the standby from its own copy of the raft data ("standby reads";
  ``disable_standby_reads`` defaults to false): a read on a standby still answers ``200``
  while no node is active, and may briefly lag a write made on the leader.
* While no node is active (leader just killed, election pending), a write sent to a standby
  answers ``307`` with a redirect to the old leader's API address (:class:`BaoClient` does not
  follow it), and briefly ``500`` while the new leader takes over.
* A plugin mount is served on a standby by that node's *own* plugin process (every unsealed
  node runs one per mount), so reads work there. A write sent to a standby is *not* forwarded
  up front: it reaches the standby's plugin, whose storage is read-only ("cannot write to
  readonly storage"). Whether the client then sees the active node's answer or an error
  depends on the error the plugin returns (the builtin kv engine's writes do get forwarded).
* Right after a kv-v2 mount is enabled, standbys answer ``400`` "Waiting for the primary to
  upgrade from non-versioned to versioned data" for about a second.

Newly joined nodes are non-voters until autopilot promotes them (``server_stabilization_time``,
default 10 s); the harness sets it to 1 s on the leader right after initialisation and
:meth:`OpenBaoCluster.start` waits until every node votes, so that stopping the leader leads to
an election among the others. A SIGTERMed leader hands leadership over at once (about 0.2 s);
after a SIGKILL the election takes a few seconds.

Each node has its own ``plugin_directory``: :func:`install_plugin_cluster` copies the file onto
every node and registers it once, through the leader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Unpack

from skyflow_emulator.lifecycle import Startable

from .catalog import PluginInfo, PluginSpec, install_plugin_on
from .client import BaoClient, BaoConnectionError, BaoError, ServerError
from .openbao import OpenBaoServer
from .ports import free_ports
from .processes import poll_until

__all__ = ["OpenBaoCluster", "install_plugin_cluster"]

_STABILIZATION_TIME = "1s"


class OpenBaoCluster(Startable):
    """Several raft nodes forming one OpenBao cluster (context manager).

    Args:
        work_dir: parent directory; node ``i`` lives in ``work_dir/node<i>``.
        size: number of nodes (3 by default; 3 tolerates losing one).
        env: extra environment for every server (and so every plugin).
        log_level: server log level (``debug`` by default, to see plugin stderr).
        audit_log: give every node a declarative file audit device.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        size: int = 3,
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
        audit_log: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        work_dir = Path(work_dir).resolve()
        ports = free_ports(2 * size)
        api_ports, cluster_ports = ports[:size], ports[size:]
        addrs = [f"http://127.0.0.1:{p}" for p in api_ports]
        self._nodes = [
            OpenBaoServer(
                work_dir / f"node{i}",
                mode="raft",
                env=env,
                log_level=log_level,
                audit_log=audit_log,
                node_id=f"node{i}",
                port=api_ports[i],
                cluster_port=cluster_ports[i],
                retry_join=[a for j, a in enumerate(addrs) if j != i],
                auto_init=i == 0,
            )
            for i in range(size)
        ]

    @property
    def nodes(self) -> Sequence[OpenBaoServer]:
        """All nodes, running or not, in index order."""
        return tuple(self._nodes)

    @property
    def root_token(self) -> str:
        """The cluster's root token."""
        return self._nodes[0].root_token

    @property
    def unseal_key(self) -> str | None:
        """The cluster's single unseal key."""
        return self._nodes[0].unseal_key

    def node(self, index: int) -> OpenBaoServer:
        """Node ``index``."""
        return self._nodes[index]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> None:
        """Start every node, initialise node 0, join and unseal the rest, wait for voters.

        Raises:
            ServerError: a node exited or a step did not finish within ``timeout``.
        """
        first, rest = self._nodes[0], self._nodes[1:]
        # Spawn every process first so that the joins below do not wait on each other's
        # start-up.
        for node in self._nodes:
            node.start(ready="listening", timeout=timeout)
        first.bring_up(ready="active", timeout=timeout)
        self._tune_autopilot(first)
        unseal_key = first.unseal_key
        if unseal_key is None:
            raise ServerError(f"{first.addr}: initialised without an unseal key")
        for node in rest:
            node.set_credentials(root_token=first.root_token, unseal_key=unseal_key)
        # Unsealing a retry_join node performs the join and blocks for 1-2 s: do them together.
        if rest:
            with ThreadPoolExecutor(max_workers=len(rest)) as pool:
                futures = [
                    pool.submit(node.bring_up, ready="unsealed", timeout=timeout) for node in rest
                ]
                for future in futures:
                    future.result()
        self.wait_for_voters(timeout=timeout)

    @staticmethod
    def _tune_autopilot(leader: OpenBaoServer) -> None:
        # Promote joined nodes to voters after 1 s instead of 10 s.
        leader.client().write(
            "sys/storage/raft/autopilot/configuration",
            {"server_stabilization_time": _STABILIZATION_TIME},
        )

    def close(self) -> None:
        """Stop every node (killing leftover plugins) and close their clients."""
        errors: list[BaseException] = []
        for node in self._nodes:
            try:
                node.close()
            except Exception as exc:  # keep stopping the other nodes
                errors.append(exc)
        if errors:
            raise ServerError(f"stopping the cluster: {errors}") from errors[0]

    def stop(self) -> None:
        """Stop every node (the cluster can be started again with :meth:`start_node`)."""
        for node in self._nodes:
            node.stop()

    def stop_node(self, index: int) -> None:
        """SIGTERM node ``index`` (a leader hands over leadership as it goes)."""
        self._nodes[index].stop()

    def kill_node(self, index: int, *, reap_plugins: bool = True) -> None:
        """SIGKILL node ``index`` (no leadership hand-over; its plugins are orphaned)."""
        self._nodes[index].kill(reap_plugins=reap_plugins)

    def start_node(self, index: int, *, timeout: float = 60.0) -> None:
        """Start node ``index`` again, unseal it and wait until it is unsealed."""
        self._nodes[index].start(ready="unsealed", timeout=timeout)

    # -- roles ------------------------------------------------------------------------------

    @staticmethod
    def _health(node: OpenBaoServer) -> dict[str, Any]:
        if not node.running:
            return {}
        try:
            return node.health()
        except (BaoConnectionError, BaoError):
            return {}

    @classmethod
    def _is_active(cls, node: OpenBaoServer) -> bool:
        health = cls._health(node)
        return bool(health) and not health.get("sealed", True) and not health.get("standby", True)

    @classmethod
    def _is_standby(cls, node: OpenBaoServer) -> bool:
        health = cls._health(node)
        return bool(health) and not health.get("sealed", True) and bool(health.get("standby"))

    def leader(self) -> OpenBaoServer:
        """The active node right now.

        Raises:
            ServerError: no running node reports itself active.
        """
        for node in self._nodes:
            if self._is_active(node):
                return node
        raise ServerError("no active node in the cluster")

    def standbys(self) -> list[OpenBaoServer]:
        """The running, unsealed standby nodes right now."""
        return [node for node in self._nodes if self._is_standby(node)]

    def wait_for_leader(
        self, exclude: OpenBaoServer | None = None, *, timeout: float = 30.0
    ) -> OpenBaoServer:
        """Wait until a node other than ``exclude`` is active, and return it.

        Raises:
            TimeoutError: no such leader within ``timeout`` seconds.
        """

        def active() -> OpenBaoServer | None:
            for node in self._nodes:
                if node is not exclude and self._is_active(node):
                    return node
            return None

        return poll_until(active, timeout=timeout, message="a new active node")

    def raft_servers(self) -> list[dict[str, Any]]:
        """The raft configuration's server list, as the current leader reports it."""
        body = self.leader().client().read("sys/storage/raft/configuration")
        servers = body.get("data", {}).get("config", {}).get("servers", [])
        return [dict(s) for s in servers]

    def wait_for_voters(self, *, timeout: float = 60.0) -> None:
        """Wait until every node is a voting member of the raft configuration.

        Raises:
            TimeoutError: not all nodes vote within ``timeout`` seconds.
        """
        wanted = {node.node_id for node in self._nodes}

        def all_vote() -> bool:
            try:
                servers = self.raft_servers()
            except ServerError:
                return False
            return {str(s.get("node_id")) for s in servers if s.get("voter")} >= wanted

        poll_until(all_vote, timeout=timeout, interval=0.2, message="all raft nodes voting")

    def client(self, token: str | None = None) -> BaoClient:
        """A client for the current leader (see :meth:`OpenBaoServer.client`)."""
        return self.leader().client(token)


def install_plugin_cluster(cluster: OpenBaoCluster, **spec: Unpack[PluginSpec]) -> PluginInfo:
    """Install a plugin on every node of a cluster and register it once, through the leader.

    The catalog is replicated, but each node runs plugins from its own ``plugin_directory``,
    so every node needs the file (with the same sha256) before any of them can run it.
    Arguments as for :func:`~skyflow_devtools.catalog.install_plugin`. Returns the leader's
    :class:`~skyflow_devtools.catalog.PluginInfo`.
    """
    return install_plugin_on(cluster.nodes, cluster.leader(), **spec)
