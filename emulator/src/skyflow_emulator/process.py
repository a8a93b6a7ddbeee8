"""Run the emulator as a subprocess and drive its admin API, for tests and the demo.

::

    with EmulatorProcess(accounts=1) as emu:
        creds = emu.admin.create_account()
        emu.admin.set_faults(fail_status=503, fail_count=2)
        env = {"SSL_CERT_FILE": emu.ca_file}  # for processes that must trust it
        ...
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from .lifecycle import Closeable

__all__ = ["EmulatorAdmin", "EmulatorError", "EmulatorProcess"]


class EmulatorError(RuntimeError):
    """The emulator could not be started or its admin API failed."""


class EmulatorAdmin(Closeable):
    """A small synchronous client of the emulator's ``/_emulator`` admin API over HTTPS."""

    def __init__(self, url: str, ca_file: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self._http = httpx.Client(
            base_url=url,
            verify=ssl.create_default_context(cafile=ca_file),
            timeout=timeout,
            trust_env=False,  # never route the local emulator through a proxy
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def _call(self, method: str, path: str, body: object = None) -> Any:
        response = self._http.request(method, f"/_emulator/{path}", json=body)
        if response.status_code >= 400:
            raise EmulatorError(f"{method} /_emulator/{path} failed with {response.status_code}")
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def create_account(self, client_name: str | None = None) -> dict[str, str]:
        """Create a service account; return its credentials JSON as a dict."""
        body = None if client_name is None else {"client_name": client_name}
        result: dict[str, str] = self._call("POST", "accounts", body)
        return result

    def accounts(self) -> list[dict[str, Any]]:
        """The accounts: clientID, clientName, keyID (newest), keyIDs, tokenURI; no keys."""
        result: list[dict[str, Any]] = self._call("GET", "accounts")["accounts"]
        return result

    def rotate_key(self, client_id: str) -> dict[str, str]:
        """A new key for an account (same clientID, new keyID); its new credentials JSON.
        The old key keeps working until :meth:`revoke_key`."""
        result: dict[str, str] = self._call("POST", f"accounts/{client_id}/keys")
        return result

    def revoke_key(self, client_id: str, key_id: str) -> list[str]:
        """Revoke one key of an account; the key IDs still active."""
        result: list[str] = self._call("DELETE", f"accounts/{client_id}/keys/{key_id}")["keyIDs"]
        return result

    def set_faults(
        self,
        *,
        latency: float = 0.0,
        fail_status: int | None = None,
        fail_count: int | None = None,
        retry_after: float | None = None,
        reject: bool = False,
        error_message: str | None = None,
        error_repeat: int | None = None,
    ) -> dict[str, Any]:
        """Replace the fault knobs (see :class:`.state.Faults`)."""
        body = {
            "latency": latency,
            "fail_status": fail_status,
            "fail_count": fail_count,
            "retry_after": retry_after,
            "reject": reject,
            "error_message": error_message,
            "error_repeat": error_repeat,
        }
        result: dict[str, Any] = self._call("POST", "faults", body)
        return result

    def reset(self) -> None:
        """Reset faults and counters (accounts stay)."""
        self._call("POST", "reset")

    def stats(self) -> dict[str, Any]:
        """Counters, recorded requests and faults."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def set_token_lifetime(self, seconds: int) -> None:
        """Change the lifetime of issued access tokens."""
        self._call("POST", "settings", {"token_lifetime": seconds})

    def public_key_pem(self) -> str:
        """The PEM public key that verifies issued access tokens."""
        return str(self._call("GET", "public-key"))


class EmulatorProcess(Closeable):
    """The emulator CLI in a subprocess; a context manager that stops it on exit.

    After :meth:`start`: ``url``, ``ca_file``, ``account_files`` and ``admin`` are set. The
    subprocess's stderr goes to ``<state_dir>/emulator.log``.
    """

    def __init__(
        self,
        *,
        accounts: int = 0,
        token_lifetime: int | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
    ) -> None:
        self._accounts = accounts
        self._token_lifetime = token_lifetime
        self._host = host
        self._port = port
        self._startup_timeout = startup_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin: EmulatorAdmin | None = None
        self.url = ""
        self.ca_file = ""
        self.account_files: list[str] = []
        self.restored = False
        """Whether the last start loaded an earlier state from ``state_dir``."""
        self.returncode: int | None = None
        """The subprocess's exit status once :meth:`stop` has run."""

    @property
    def admin(self) -> EmulatorAdmin:
        """The admin client (only while running)."""
        if self._admin is None:
            raise EmulatorError("the emulator is not running")
        return self._admin

    @property
    def state_dir(self) -> Path:
        """Where ``ca.pem``, the account files and the log are."""
        if self._state_dir is None:
            raise EmulatorError("the emulator has not been started")
        return self._state_dir

    @property
    def pid(self) -> int | None:
        """The subprocess id while running."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The command line that starts the emulator."""
        cmd = [sys.executable, "-m", "skyflow_emulator"]
        cmd += ["--host", self._host, "--port", str(self._port), "--state-dir", str(self.state_dir)]
        cmd += ["--accounts", str(self._accounts)]
        if self._token_lifetime is not None:
            cmd += ["--token-lifetime", str(self._token_lifetime)]
        return cmd

    def start(self) -> EmulatorProcess:
        """Start the subprocess and wait for its ready line."""
        if self._proc is not None:
            raise EmulatorError("already started")
        if self._state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="skyflow-emulator-")
            self._state_dir = Path(self._tmp.name)
        self._state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # make the package importable in the child even when it is not installed
        src = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        with (self._state_dir / "emulator.log").open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=log, env=env
            )
        try:
            ready = self._read_ready_line()
        except BaseException:
            self.stop()
            raise
        self.url = str(ready["url"])
        self.ca_file = str(ready["ca_file"])
        self.account_files = [str(p) for p in ready.get("accounts", [])]
        self.restored = bool(ready.get("restored", False))
        self._admin = EmulatorAdmin(self.url, self.ca_file)
        return self

    def plugin_env(self) -> dict[str, str]:
        """The environment a plugin needs to use this emulator: trust its CA
        (``SKYFLOW_CA_FILE``) and allow its ``127.0.0.1:<port>`` as a token host."""
        return {
            "SKYFLOW_CA_FILE": self.ca_file,
            "SKYFLOW_ALLOWED_TOKEN_HOSTS": urlsplit(self.url).netloc,
        }

    def plugin_env_entries(self) -> list[str]:
        """:meth:`plugin_env` as ``KEY=VALUE`` entries, the form of a catalog's ``env`` and of
        ``skyflow-vault-plugin install --env``."""
        return [f"{key}={value}" for key, value in self.plugin_env().items()]

    def _read_ready_line(self) -> dict[str, Any]:
        assert self._proc is not None
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EmulatorError(f"the emulator was not ready in {self._startup_timeout} s")
                if not selector.select(timeout=min(remaining, 0.5)):
                    if self._proc.poll() is not None:
                        raise EmulatorError(self._exit_message())
                    continue
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    self._proc.wait(timeout=5)
                    raise EmulatorError(self._exit_message())
                buffer += chunk
        line = buffer.split(b"\n", 1)[0]
        try:
            ready = json.loads(line)
        except ValueError:
            raise EmulatorError("the emulator printed an unexpected ready line") from None
        if not isinstance(ready, dict) or "url" not in ready or "ca_file" not in ready:
            raise EmulatorError("the emulator printed an unexpected ready line")
        return ready

    def _exit_message(self) -> str:
        code = self._proc.returncode if self._proc is not None else None
        return f"the emulator exited with status {code}; see {self.state_dir / 'emulator.log'}"

    def stop(self, timeout: float = 10.0) -> None:
        """Send SIGTERM, wait, then kill if needed; remove an owned temp state dir."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
            self.returncode = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._state_dir = None

    def close(self) -> None:
        """:meth:`stop` with its default timeout (what leaving a ``with`` block does)."""
        self.stop()

    def __enter__(self) -> Self:
        # start() stops again by itself when it fails half-way; a failure before that (say,
        # "already started") must not stop an emulator that someone else started.
        self.start()
        return self
