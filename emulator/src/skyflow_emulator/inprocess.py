"""The emulator in-process, for unit tests: the Starlette app behind ``httpx.ASGITransport``.

::

    emu = InProcessEmulator()
    account = parse_credentials(emu.create_account())
    async with TokenClient(transport=emu.transport()) as client:
        token = await client.exchange(account, ["role1"])
    assert emu.state.successes == 1
"""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from .accounts import create_service_account
from .app import create_app
from .state import EmulatorState

__all__ = ["DEFAULT_BASE_URL", "InProcessEmulator"]

DEFAULT_BASE_URL = "https://emulator.test"


class InProcessEmulator:
    """An emulator without sockets: its ``state`` can be inspected and changed directly."""

    def __init__(
        self, state: EmulatorState | None = None, *, base_url: str = DEFAULT_BASE_URL
    ) -> None:
        self.state = state if state is not None else EmulatorState()
        self.base_url = base_url.rstrip("/")
        self.app: Starlette = create_app(self.state)

    def transport(self) -> httpx.ASGITransport:
        """A transport that sends requests straight to the app."""
        return httpx.ASGITransport(app=self.app)

    def client(self) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` on the app, with ``base_url`` set (close it after use)."""
        return httpx.AsyncClient(transport=self.transport(), base_url=self.base_url)

    def create_account(self, client_name: str = "emulated-service-account") -> dict[str, str]:
        """Create a service account; return its credentials JSON as a dict."""
        return create_service_account(self.state, base_url=self.base_url, client_name=client_name)
