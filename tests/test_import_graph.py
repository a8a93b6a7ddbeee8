"""The SDK is reusable: nothing under sdk/ imports the Skyflow engine or the emulator."""

from __future__ import annotations

import ast
from pathlib import Path

import vault_plugin_sdk as sdk

FORBIDDEN = ("skyflow_vault_plugin.skyflow", "skyflow_emulator")


def test_sdk_never_imports_the_engine() -> None:
    root = Path(sdk.__file__).parent
    offenders = []
    for source in root.rglob("*.py"):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{source}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert offenders == []
    assert len(list(root.rglob("*.py"))) > 10  # the walk saw the SDK
