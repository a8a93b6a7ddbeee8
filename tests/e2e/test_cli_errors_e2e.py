"""Every error path of config, roles and creds through the real ``bao`` CLI binary: what a
person at a terminal sees. Each case asserts on what the CLI prints, not on the API.

The CLI drops the body of a 404 on ``read`` and ``list`` and prints only ``No value found at
<path>``; so a 404 is kept only where "nothing is there" is the whole reason (an object read,
an empty list: Vault's convention). Everything else is a status whose message the CLI prints.
The health path's 503 (an unhealthy mount) is covered by the health tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from skyflow_emulator.process import EmulatorAdmin

if TYPE_CHECKING:
    from conftest import SkyflowStack

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    shows: tuple[str, ...]
    """Texts the CLI must print (stdout and stderr together)."""
    exit_code: int = 2
    """``bao`` exits 2 on an error from the server, 0 on success."""


def run_cases(stack: SkyflowStack, cases: list[Case]) -> None:
    problems = []
    for case in cases:
        done = stack.bao.cli(*case.argv, timeout=120)
        printed = done.stdout + done.stderr
        missing = [text for text in case.shows if text not in printed]
        if done.returncode != case.exit_code or missing:
            problems.append(
                f"$ bao {' '.join(case.argv)}\n  exit {done.returncode} (want {case.exit_code}),"
                f" missing {missing}\n  printed: {printed.strip()[:500]}"
            )
    assert not problems, "\n".join(problems)


def refused_writes(path: str, writes: list[tuple[list[str], str]]) -> list[Case]:
    """``bao write <path> <fields>`` answered 400 with a message that says ``why``, for each
    ``(fields, why)`` of ``writes``."""
    return [Case(("write", path, *fields), ("Code: 400", why)) for fields, why in writes]


@pytest.fixture
def mount(stack: SkyflowStack) -> str:
    return stack.mount("skyflow/cli")


def test_config_errors(stack: SkyflowStack, account_file: Path) -> None:
    path = f"skyflow/cli-config-{account_file.parent.name[-6:]}"
    stack.client().enable_secrets(path, "skyflow")
    run_cases(
        stack,
        [
            # An object read of nothing: the CLI's own words say it.
            Case(("read", f"{path}/config"), (f"No value found at {path}/config",)),
            *refused_writes(
                f"{path}/config",
                [
                    (
                        ["description=x"],
                        "one of credentials_json or credentials_file_path is required",
                    ),
                    (["credential_json=x"], "'credential_json': unknown field for this path"),
                    (["credentials_json=not-json"], "'credentials_json': is not valid JSON"),
                    (
                        [
                            f"credentials_json=@{account_file}",
                            f"credentials_file_path={account_file}",
                        ],
                        "not both",
                    ),
                    (
                        ["credentials_file_path=sa.json"],
                        "'credentials_file_path': must be an absolute path",
                    ),
                    (["credentials_file_path=/nonexistent/sa.json"], "(this mount's directory)"),
                    (["validate_credentials=maybe", "description=x"], "'validate_credentials'"),
                ],
            ),
            Case(("list", f"{path}/config"), (f"No value found at {path}/config",)),
            # Deleting what is not there succeeds, as everywhere in Vault.
            Case(("delete", f"{path}/config"), ("Success! Data deleted",), exit_code=0),
        ],
    )


def test_config_errors_from_skyflow(
    stack: SkyflowStack, account_file: Path, fresh_emulator: EmulatorAdmin
) -> None:
    path = f"skyflow/cli-upstream-{account_file.parent.name[-6:]}"
    stack.client().enable_secrets(path, "skyflow")
    fresh_emulator.set_faults(reject=True)
    run_cases(
        stack,
        [
            Case(
                ("write", f"{path}/config", f"credentials_json=@{account_file}"),
                ("Code: 400", "Skyflow token request failed: rejected", "request id"),
            )
        ],
    )
    fresh_emulator.set_faults(fail_status=503)
    run_cases(
        stack,
        [
            Case(
                ("write", f"{path}/config", f"credentials_json=@{account_file}"),
                ("Code: 503", "could not validate the credentials", "HTTP 503"),
            )
        ],
    )
    assert stack.bao.cli("read", f"{path}/config").returncode == 2  # nothing was saved


def test_role_errors(stack: SkyflowStack, mount: str) -> None:
    run_cases(
        stack,
        [
            # An empty mount: Vault answers an empty list with 404.
            Case(("list", f"{mount}/roles"), (f"No value found at {mount}/roles",)),
            Case(("read", f"{mount}/roles/nope"), (f"No value found at {mount}/roles/nope",)),
            *refused_writes(
                f"{mount}/roles/r",
                [
                    (["description=x"], "'role_ids': is required"),
                    (["role_ids=bad id"], "'role_ids': role ID 'bad id'"),
                    (
                        ["role_ids=r1", "min_remaining_ttl=2h"],
                        "'min_remaining_ttl': must be less than",
                    ),
                    (["role_ids=r1", "ctx_mode=bogus"], "'ctx_mode': must be one of"),
                    (["role_ids=r1", "roleids=r2"], "'roleids': unknown field for this path"),
                ],
            ),
            Case(("delete", f"{mount}/roles"), ("Code: 405", "unsupported operation")),
            Case(("delete", f"{mount}/roles/nope"), ("Success! Data deleted",), exit_code=0),
        ],
    )
    # Nothing of the refused writes was stored.
    run_cases(stack, [Case(("read", f"{mount}/roles/r"), ("No value found",))])


def test_creds_errors(stack: SkyflowStack, mount: str) -> None:
    client = stack.client()
    client.write(f"{mount}/roles/plain", {"role_ids": "r1", "ctx_mode": "none"})
    unconfigured = f"skyflow/cli-empty-{mount[-6:]}"
    client.enable_secrets(unconfigured, "skyflow")
    client.write(f"{unconfigured}/roles/plain", {"role_ids": "r1"})
    unknown = f"role 'nope' does not exist; this mount's roles are listed at {mount}/roles/"
    run_cases(
        stack,
        [
            # Was "No value found at ...": a 404 whose reason the CLI dropped.
            Case(("read", f"{mount}/creds/nope"), ("Code: 400", unknown)),
            Case(("write", f"{mount}/creds/nope", "ctx=a"), ("Code: 400", unknown)),
            Case(
                ("read", f"{unconfigured}/creds/plain"),
                ("Code: 400", "this mount is not configured: write its service account"),
            ),
            Case(
                ("read", f"{mount}/creds/plain", "ctx=a"),
                ("Code: 400", "'ctx': this role does not accept a ctx"),
            ),
            Case(
                ("write", f"{mount}/creds/plain", "context=a"),
                ("Code: 400", "'context': unknown field for this path"),
            ),
            Case(("delete", f"{mount}/creds/plain"), ("Code: 405", "unsupported operation")),
        ],
    )


def test_creds_errors_from_skyflow(
    stack: SkyflowStack, mount: str, fresh_emulator: EmulatorAdmin
) -> None:
    stack.client().write(f"{mount}/roles/fresh", {"role_ids": "r1", "cache_tokens": False})
    fresh_emulator.set_faults(reject=True)
    run_cases(
        stack,
        [
            Case(
                ("read", f"{mount}/creds/fresh"),
                ("Code: 502", "Skyflow token request failed: rejected (HTTP 401", "request id"),
            )
        ],
    )
    # Neither the plugin (a refusal) nor the 2.7.2 CLI (a 502) retries: one call.
    assert fresh_emulator.stats()["token_calls"] == 1
    fresh_emulator.set_faults(fail_status=503)
    run_cases(
        stack,
        [
            Case(
                ("read", f"{mount}/creds/fresh"),
                ("Code: 503", "Skyflow token request failed: failing (HTTP 503"),
            )
        ],
    )


def test_health_errors_other_than_unhealthy(stack: SkyflowStack, mount: str) -> None:
    # An unhealthy mount's 503 is the health tests' matter; these are the other errors.
    run_cases(
        stack,
        [
            Case(("delete", f"{mount}/health"), ("Code: 405", "unsupported operation")),
            Case(("write", f"{mount}/health", "x=1"), ("Code: 405", "unsupported operation")),
            Case(("list", f"{mount}/health"), (f"No value found at {mount}/health",)),
        ],
    )
