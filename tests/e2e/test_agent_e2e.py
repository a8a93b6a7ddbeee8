"""docs/applications.md, run as printed: hvac, and a real ``bao agent`` (AppRole auto-auth)
rendering ``skyflow/insurance/creds/producer`` to a file, to an env file, and into an
application's environment (``exec`` mode).

The commands and agent configurations are taken from the doc's titled code blocks. One
change is made: ``static_secret_render_interval`` becomes 5 s instead of 5 min, with the
emulator's tokens living 30 s and the role's ``min_remaining_ttl`` at 15 s, so that the
replacement of a token happens within the test. The doc's rule (interval shorter than
``min_remaining_ttl``) holds for these values as for the printed ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import jwt
import pytest

from skyflow_devtools.openbao import bao_binary, controlled_environment
from skyflow_devtools.processes import poll_until

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "applications.md"
BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```', re.DOTALL | re.MULTILINE)
MOUNT = "skyflow/insurance"
TOKEN_LIFETIME = 30
MIN_REMAINING_TTL = 15
PRINTED_INTERVAL = 'static_secret_render_interval = "5m"'
TEST_INTERVAL = 'static_secret_render_interval = "5s"'
INTERVAL = 5


def doc_blocks() -> dict[str, str]:
    return dict(BLOCK.findall(DOC.read_text()))


def fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def expiry(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        code = self.proc.poll()
        assert code is None, f"agent exited with {code}:\n{self.text()[-3000:]}"


@pytest.fixture
def workdir(stack: SkyflowStack, tmp_path: Path) -> Iterator[Path]:
    """A directory holding the doc's files, a configured mount and short token lifetimes."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    client = stack.client()
    client.enable_secrets(MOUNT, "skyflow")
    client.write(f"{MOUNT}/config", {"credentials_json": json.dumps(stack.new_account())})
    client.write(
        f"{MOUNT}/roles/producer",
        {"role_ids": "insurance-writer", "min_remaining_ttl": MIN_REMAINING_TTL},
    )
    stack.admin.set_token_lifetime(TOKEN_LIFETIME)
    try:
        yield tmp_path
    finally:
        stack.admin.set_token_lifetime(3600)
        client.disable_secrets(MOUNT)


def shell_env(stack: SkyflowStack, token: str | None) -> dict[str, str]:
    """The environment of a terminal: ``bao`` and this interpreter on PATH, BAO_ADDR set."""
    env = controlled_environment()
    path = [str(bao_binary().parent), str(Path(sys.executable).parent), env.get("PATH", "")]
    env["PATH"] = os.pathsep.join(path)
    env["BAO_ADDR"] = stack.bao.addr
    if token is not None:
        env["BAO_TOKEN"] = token
    return env


def run_block(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def agent(script: str, cwd: Path, env: dict[str, str], name: str) -> Iterator[Agent]:
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        handle: IO[bytes] = out
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {script.strip()}"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Agent(proc, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_the_doc_blocks_are_all_run() -> None:
    assert set(doc_blocks()) == {
        "hvac.sh",
        "setup.sh",
        "agent.hcl",
        "run-agent.sh",
        "agent-exec.hcl",
        "run-agent-exec.sh",
    }


def test_hvac_example_as_printed(stack: SkyflowStack, workdir: Path) -> None:
    client = stack.client()
    policy = (REPO / "examples" / "policies" / "insurance-producer.hcl").read_text()
    client.write_policy("insurance-producer", policy)
    token = client.create_token(["insurance-producer"])
    done = run_block(doc_blocks()["hvac.sh"], workdir, shell_env(stack, token))
    assert done.returncode == 0, done.stderr
    assert "token sha256:" in done.stdout
    assert "eyJ" not in done.stdout


def test_agent_replaces_the_token_before_it_expires(stack: SkyflowStack, workdir: Path) -> None:
    blocks = doc_blocks()
    setup = run_block(blocks["setup.sh"], workdir, shell_env(stack, stack.bao.root_token))
    assert setup.returncode == 0, setup.stderr
    for name in ("agent.hcl", "agent-exec.hcl"):
        assert PRINTED_INTERVAL in blocks[name], name
        (workdir / name).write_text(blocks[name].replace(PRINTED_INTERVAL, TEST_INTERVAL))

    token_file, env_file = workdir / "skyflow-token", workdir / "skyflow.env"
    agent_env = shell_env(stack, None)  # the agent logs in by itself (AppRole)
    with (
        agent(blocks["run-agent.sh"], workdir, agent_env, "agent") as files,
        agent(blocks["run-agent-exec.sh"], workdir, agent_env, "agent-exec") as supervisor,
    ):

        def rendered() -> str | None:
            files.check_alive()
            text = token_file.read_text().strip() if token_file.exists() else ""
            return text or None

        first = poll_until(rendered, timeout=60, message="the token file")
        claims = jwt.decode(
            first,
            stack.admin.public_key_pem(),
            algorithms=["RS256"],
            audience=stack.emulator.url,
        )
        assert claims["scope"] == ["insurance-writer"]
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"

        def env_file_has(token: str) -> bool:
            return env_file.exists() and f"SKYFLOW_BEARER_TOKEN={token}\n" in env_file.read_text()

        poll_until(lambda: env_file_has(first), timeout=30, message="the env file")
        assert "SKYFLOW_TOKEN_EXPIRES_AT=" in env_file.read_text()

        # The plugin re-serves the first token while it has >= 15 s left, so the agent gets
        # a new one once it is below that: before it expires, since the interval is 5 s.
        def replaced() -> str | None:
            token = rendered()
            return token if token != first else None

        second = poll_until(
            replaced,
            timeout=TOKEN_LIFETIME + 30,
            interval=0.1,
            message="a replaced token",
        )
        seen_at = time.time()
        left = expiry(first) - seen_at
        assert left > 0, f"the old token had expired {-left:.1f} s before it was replaced"
        # The doc's bound: more than min_remaining_ttl - interval left (exp is whole seconds).
        assert left > MIN_REMAINING_TTL - INTERVAL - 1.5, f"only {left:.1f} s left"
        assert expiry(second) > expiry(first)
        poll_until(lambda: env_file_has(second), timeout=30, message="the env file, again")

        # exec mode: the application started with the first token, and was restarted with
        # the second (both agents read the same cached token from the plugin).
        def started_with(token: str) -> bool:
            supervisor.check_alive()
            return f"app_env: started with token {fingerprint(token)}" in supervisor.text()

        poll_until(lambda: started_with(first), timeout=30, message="the app with token 1")
        poll_until(lambda: started_with(second), timeout=30, message="the app with token 2")
        assert "eyJ" not in supervisor.text()  # fingerprints only
