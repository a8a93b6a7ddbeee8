"""``make demo``: a real OpenBao, the Skyflow emulator, three business-unit mounts, a token each.

::

    python -m skyflow_devtools.demo            # run, then wait for Ctrl-C
    python -m skyflow_devtools.demo --stop     # stop a running demo (make demo-stop)
    python -m skyflow_devtools.demo --once     # run, print, stop (used by the tests)

Steps, each the way an operator would do it:

1. start the Skyflow emulator (HTTPS, its own CA) and create one service account per unit;
2. start an OpenBao dev server whose config sets ``plugin_directory``;
3. install the plugin with ``skyflow-vault-plugin install``'s code path and register it by
   sha256, running the exact ``bao write sys/plugins/catalog/...`` command ``install`` prints,
   with ``env=SKYFLOW_CA_FILE=<emulator CA>`` so the plugin trusts the emulator,
   ``SKYFLOW_ALLOWED_TOKEN_HOSTS=127.0.0.1:<port>`` so it may call it, and
   ``SKYFLOW_CREDENTIALS_DIR=<work dir>/credentials`` for the file-mode unit;
4. enable ``skyflow/insurance`` (``credentials_json``), ``skyflow/lending``
   (``credentials_file_path``) and ``skyflow/clcm`` (``credentials_json``), write each config,
   a ``producer`` role (one Skyflow role ID) and a ``consumer-analytics`` role (two);
5. read a token per unit and print its claims and expiry. The raw token is never printed
   (only a fingerprint), and neither is any private key.

State lives in ``.demo/`` (``demo.json`` holds the process ids for ``--stop``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyflow_vault_plugin.install import Installation, install

from .catalog import PluginInfo
from .client import BaoClient
from .openbao import OpenBaoServer
from .processes import cmdline, poll_until, processes_matching

PLUGIN_NAME = "skyflow"
STATE_FILE = "demo.json"
REPO_ROOT = Path(__file__).resolve().parents[3]
_STOP_WAIT = 40.0


@dataclass(frozen=True)
class Unit:
    """A business unit: its mount, how its config names the key, and its roles."""

    name: str
    source: str  # "credentials_json" or "credentials_file_path"
    producer: tuple[str, ...]
    consumer: tuple[str, ...]

    @property
    def mount(self) -> str:
        return f"skyflow/{self.name}"


UNITS = (
    Unit("insurance", "credentials_json", ("ins-producer",), ("ins-analytics", "ins-reporting")),
    Unit(
        "lending",
        "credentials_file_path",
        ("lend-producer",),
        ("lend-analytics", "lend-reporting"),
    ),
    Unit("clcm", "credentials_json", ("clcm-producer",), ("clcm-analytics", "clcm-reporting")),
)


class DemoError(Exception):
    """The demo cannot run or stop as asked."""


def _say(text: str = "") -> None:
    print(text, flush=True)


# -- process bookkeeping ---------------------------------------------------------------------


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and its command line contains ``marker`` (guards against pid
    reuse: only processes this demo started are ever signalled)."""
    return bool(pid) and marker in " ".join(cmdline(pid))


def _terminate(pid: int, marker: str, timeout: float) -> bool:
    """SIGTERM, wait, then SIGKILL a process of ours; whether it was running."""
    if not _alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        poll_until(lambda: not _alive(pid, marker), timeout=timeout)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def _read_state(work_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((work_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(work_dir: Path, **state: Any) -> None:
    path = work_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def stop_demo(work_dir: Path) -> bool:
    """Stop a demo started in ``work_dir``; whether anything was running."""
    state = _read_state(work_dir)
    if state is None:
        return False
    stopped = _terminate(int(state.get("pid", 0)), "devtools.demo", _STOP_WAIT)
    # A demo that was SIGKILLed leaves its servers behind: stop them directly.
    stopped |= _terminate(int(state.get("bao_pid", 0)), str(work_dir / "bao"), 30.0)
    stopped |= _terminate(int(state.get("emulator_pid", 0)), "skyflow_emulator", 10)
    plugin_dir = f"{work_dir / 'bao' / 'plugins'}/"
    for pid in processes_matching(lambda arg: plugin_dir in arg):
        stopped |= _terminate(pid, plugin_dir, 5.0)
    (work_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


# -- tokens ----------------------------------------------------------------------------------


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded without verification (for display)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if not isinstance(claims, dict):
        raise DemoError("the access token's payload is not a JSON object")
    return claims


def fingerprint(token: str) -> str:
    """A short, one-way identifier of a token, safe to print."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _utc(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_token(path: str, data: dict[str, Any], public_key: str | None) -> list[str]:
    """Readable lines about a ``creds`` response: claims, expiry, fingerprint, no token."""
    token = str(data["access_token"])
    claims = jwt_claims(token)
    signature = "not checked"
    if public_key is not None:
        import jwt

        try:
            jwt.decode(token, public_key, algorithms=["RS256"], options={"verify_aud": False})
            signature = "valid (emulator's signing key)"
        except jwt.PyJWTError as exc:
            signature = f"INVALID ({type(exc).__name__})"
    scope = claims.get("scope")
    scopes = " ".join(f"role:{r}" for r in scope) if isinstance(scope, list) else str(scope)
    ctx = claims.get("ctx")
    return [
        f"  token from {path}: {fingerprint(token)} (the token itself is not shown)",
        f"    sub        {claims.get('sub')}  (the unit's service account)",
        f"    scope      {scopes}",
        f"    ctx        {json.dumps(ctx) if ctx is not None else '-'}",
        f"    issued     {_utc(claims.get('iat'))}",
        f"    expires    {_utc(claims.get('exp'))}  (expires_in {data.get('expires_in')} s, "
        f"expires_at {data.get('expires_at')})",
        f"    signature  {signature}",
    ]


# -- the demo --------------------------------------------------------------------------------


def _register(bao: OpenBaoServer, installation: Installation) -> None:
    argv = installation.bao_register_argv()
    _say(f"  $ {shlex.join(argv)}")
    bao.cli(*argv[1:], check=True)
    bao.record_plugin(
        PluginInfo(
            name=installation.name,
            sha256=installation.sha256,
            path=installation.path,
            version=None,
            command=installation.command,
        )
    )


def credentials_dir(work_dir: Path) -> Path:
    """The demo's ``SKYFLOW_CREDENTIALS_DIR``."""
    return work_dir / "credentials"


def _configure(
    bao: OpenBaoServer, client: BaoClient, unit: Unit, account: dict[str, str], work_dir: Path
) -> None:
    argv = ["bao", "secrets", "enable", f"-path={unit.mount}", PLUGIN_NAME]
    _say(f"  $ {shlex.join(argv)}")
    bao.cli(*argv[1:], check=True)
    config: dict[str, Any] = {
        "description": f"{unit.name} business unit",
        "tags": f"unit={unit.name},demo",
    }
    if unit.source == "credentials_file_path":
        # the plugin reads files only under SKYFLOW_CREDENTIALS_DIR/<mount path>/
        directory = credentials_dir(work_dir) / unit.mount
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "service-account.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(account, handle, indent=2)
        config["credentials_file_path"] = str(path.resolve())
    else:
        config["credentials_json"] = json.dumps(account, indent=2)
    client.write(f"{unit.mount}/config", config)
    client.write(f"{unit.mount}/roles/producer", {"role_ids": ",".join(unit.producer)})
    client.write(f"{unit.mount}/roles/consumer-analytics", {"role_ids": list(unit.consumer)})


def _apply_example_policies(client: BaoClient) -> str | None:
    """Load examples/policies (when run from a checkout) and make an insurance producer token."""
    policies = REPO_ROOT / "examples" / "policies"
    if not policies.is_dir():
        return None
    for path in sorted(policies.glob("*.hcl")):
        client.write_policy(path.stem, path.read_text())
    return client.create_token(["insurance-producer"], ttl="8h", no_default_policy=False)


def run_demo(work_dir: Path, *, once: bool) -> int:
    """Run the demo; with ``once`` stop everything after printing."""
    from skyflow_emulator import EmulatorProcess

    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir = work_dir.resolve()
    state = _read_state(work_dir)
    if state is not None:
        if _alive(int(state.get("pid", 0)), "devtools.demo"):
            raise DemoError(
                f"a demo is already running (pid {state['pid']}); stop it with `make demo-stop`"
            )
        stop_demo(work_dir)  # leftovers of a demo that did not stop cleanly

    with contextlib.ExitStack() as stack:
        stack.callback((work_dir / STATE_FILE).unlink, missing_ok=True)
        _say("Starting the Skyflow emulator (HTTPS, with its own CA) ...")
        emulator = EmulatorProcess(state_dir=work_dir / "emulator")
        stack.callback(emulator.stop)
        emulator.start()
        _write_state(work_dir, pid=os.getpid(), emulator_pid=emulator.pid)
        _say(f"  {emulator.url}  CA: {emulator.ca_file}")

        _say("Starting an OpenBao dev server ...")
        # The host's SSL_CERT_FILE / SSL_CERT_DIR reach the server, as from an operator's shell:
        # the plugin trusts the emulator through SKYFLOW_CA_FILE all the same.
        host_tls = {k: v for k, v in os.environ.items() if k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        bao = OpenBaoServer.dev(work_dir / "bao", env=host_tls)
        stack.callback(bao.close)
        bao.start()
        _write_state(
            work_dir,
            pid=os.getpid(),
            emulator_pid=emulator.pid,
            bao_pid=bao.pid,
            addr=bao.addr,
            token=bao.root_token,
        )
        client = bao.client()
        _say(f"  {bao.addr}  (log: {bao.log_path})")

        _say("Installing the plugin (skyflow-vault-plugin install) and registering it by sha256:")
        plugin_env = emulator.plugin_env_entries()
        plugin_env.append(f"SKYFLOW_CREDENTIALS_DIR={credentials_dir(work_dir)}")
        installation = install(bao.plugin_dir, PLUGIN_NAME, env=plugin_env)
        _say(
            f"  {installation.path}: sha256 {installation.sha256[:16]}..., pins "
            f"{installation.files} files"
        )
        _register(bao, installation)

        public_key = emulator.admin.public_key_pem()
        for unit in UNITS:
            _say()
            _say(f"{unit.mount}  (config from {unit.source})")
            account = emulator.admin.create_account(f"{unit.name}-service-account")
            _configure(bao, client, unit, account, work_dir)
            config = client.read(f"{unit.mount}/config")["data"]
            _say(
                f"  service account {config['client_name']} (client_id {config['client_id']}), "
                f"config version {config['version']}"
            )
            _say(
                f"  roles: producer [{', '.join(unit.producer)}], "
                f"consumer-analytics [{', '.join(unit.consumer)}]"
            )
            path = f"{unit.mount}/creds/producer"
            data = client.read(path)["data"]
            for line in describe_token(path, data, public_key):
                _say(line)
            if unit.name == "lending":
                path = f"{unit.mount}/creds/consumer-analytics"
                body = {"ctx": {"user_id": "u-1001", "region": "eu"}}
                data = client.write(path, body)["data"]
                for line in describe_token(f"{path} with ctx", data, public_key):
                    _say(line)

        app_token = _apply_example_policies(client)
        _print_try_it(bao, app_token)
        if once:
            _say("Stopping (--once) ...")
        else:
            _say("The servers keep running. Stop with Ctrl-C here, or `make demo-stop` elsewhere.")
            _wait(bao, emulator)
            _say("Stopping ...")
    _say("Stopped.")
    return 0


def _print_try_it(bao: OpenBaoServer, app_token: str | None) -> None:
    bao_cli = ".venv/bin/bao"
    _say()
    _say("Try it in another terminal (from the repository root):")
    _say(f"  export BAO_ADDR={bao.addr} BAO_TOKEN={bao.root_token}")
    _say(f"  {bao_cli} read skyflow/insurance/creds/producer")
    _say(
        f'  echo \'{{"ctx": {{"user_id": "u-1001"}}}}\' | '
        f"{bao_cli} write skyflow/lending/creds/consumer-analytics -"
    )
    _say(f"  {bao_cli} read skyflow/clcm/config")
    _say(f"  {bao_cli} read skyflow/insurance/health")
    _say(f"  {bao_cli} list skyflow/lending/roles")
    _say(f"  {bao_cli} path-help skyflow/insurance/creds/producer")
    if app_token is not None:
        _say("An application token limited to examples/policies/insurance-producer.hcl:")
        _say(
            f"  BAO_TOKEN={app_token} .venv/bin/python examples/app_hvac.py "
            "--mount skyflow/insurance --role producer --once"
        )
        _say(
            f"  BAO_TOKEN={app_token} {bao_cli} read skyflow/insurance/creds/consumer-analytics"
            "   # permission denied"
        )


def _wait(bao: OpenBaoServer, emulator: Any) -> None:
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop:
            if not bao.running:
                _say(f"OpenBao exited; see {bao.log_path}")
                return
            if emulator.pid is None:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m skyflow_devtools.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m skyflow_devtools.demo",
        description="OpenBao + the Skyflow emulator + three business-unit mounts.",
    )
    parser.add_argument("--work-dir", type=Path, default=Path(".demo"), help="default: .demo")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run, print, then stop everything")
    mode.add_argument("--stop", action="store_true", help="stop a running demo")
    args = parser.parse_args(argv)
    work_dir: Path = args.work_dir.resolve()
    if args.stop:
        if stop_demo(work_dir):
            _say("Demo stopped.")
        else:
            _say(f"No demo is running (nothing in {work_dir / STATE_FILE}).")
        return 0
    try:
        with _interruptible():
            return run_demo(work_dir, once=args.once)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _say("Interrupted; stopped.")
        return 130


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGTERM during start-up into KeyboardInterrupt, so that cleanup runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
