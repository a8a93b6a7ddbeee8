"""A local HTTPS stand-in for Skyflow's token endpoint, for tests and demos.

* :class:`InProcessEmulator` -- the app behind ``httpx.ASGITransport`` (unit tests);
* :class:`EmulatorProcess` -- the ``skyflow-emulator`` CLI in a subprocess over real HTTPS,
  with an :class:`EmulatorAdmin` client;
* :func:`create_app`, :class:`EmulatorState`, :func:`create_service_account` -- the parts.
"""

from .accounts import create_service_account
from .app import create_app
from .inprocess import InProcessEmulator
from .process import EmulatorAdmin, EmulatorError, EmulatorProcess
from .state import EmulatorState, Faults

__all__ = [
    "EmulatorAdmin",
    "EmulatorError",
    "EmulatorProcess",
    "EmulatorState",
    "Faults",
    "InProcessEmulator",
    "create_app",
    "create_service_account",
]
