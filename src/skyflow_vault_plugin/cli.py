"""The ``skyflow-vault-plugin`` executable: run by Vault/OpenBao with no arguments."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Serve the plugin when started by a host; otherwise explain how to install it."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        from .sdk.plugin import serve
        from .skyflow.backend import PLUGIN_VERSION, factory

        return serve(factory, version=PLUGIN_VERSION)
    if args[0] in ("--version", "version"):
        from . import __version__

        print(f"skyflow-vault-plugin v{__version__}")
        return 0
    print("usage: skyflow-vault-plugin [--version]", file=sys.stderr)
    return 2
