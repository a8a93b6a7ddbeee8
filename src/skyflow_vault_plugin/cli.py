"""The ``skyflow-vault-plugin`` executable: run by Vault/OpenBao with no arguments."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sdk.framework import Backend, BackendConfig


async def _engine_factory(config: BackendConfig) -> Backend:
    # Imported on first Setup rather than at start: the handshake is not kept waiting on
    # the engine's dependencies (httpx, PyJWT, OpenTelemetry).
    from .skyflow.backend import factory

    return await factory(config)


def main(argv: list[str] | None = None) -> int:
    """Serve the plugin when started by a host; otherwise explain how to install it."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        from . import __version__
        from .sdk.plugin import serve

        return serve(_engine_factory, version=f"v{__version__}")
    if args[0] in ("--version", "version"):
        from . import __version__

        print(f"skyflow-vault-plugin v{__version__}")
        return 0
    print("usage: skyflow-vault-plugin [--version]", file=sys.stderr)
    return 2
