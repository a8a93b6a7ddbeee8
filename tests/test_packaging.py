"""The plugin's wheel holds only what runs in production; the SDK's wheel only the SDK."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
PIP_WHEEL += ["--no-index"]


def _wheel(source: Path, out: Path) -> zipfile.ZipFile:
    """Build a wheel of ``source`` offline (this virtualenv's setuptools) and open it."""
    subprocess.run(
        [*PIP_WHEEL, "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.fixture(scope="module")
def plugin_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    # A copy of what the root pyproject builds from, so the checkout gets no build/ folder.
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", tree / "src", ignore=ignore)
    shutil.copytree(REPO / "sdk" / "src", tree / "sdk" / "src", ignore=ignore)
    with _wheel(tree, tmp_path_factory.mktemp("wheel")) as archive:
        yield archive


def test_the_plugin_wheel_holds_the_engine_and_the_sdk_only(
    plugin_wheel: zipfile.ZipFile,
) -> None:
    names = plugin_wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {
        "skyflow_vault_plugin",
        "vault_plugin_sdk",
        "skyflow_vault_plugin-0.1.0.dist-info",
    }
    assert "skyflow_vault_plugin/cli.py" in names
    assert "vault_plugin_sdk/plugin/serve.py" in names
    assert "vault_plugin_sdk/plugin/pb/backend_pb2.py" in names
    # no emulator, dev tools, tests, examples or SDK test helpers
    forbidden = ("vault_plugin_sdk/testing", "emulator", "devtools", "tests/", "examples/", "test_")
    assert [n for n in names if any(word in n for word in forbidden)] == []


def test_the_plugin_wheel_installs_one_console_script(plugin_wheel: zipfile.ZipFile) -> None:
    info = "skyflow_vault_plugin-0.1.0.dist-info"
    scripts = plugin_wheel.read(f"{info}/entry_points.txt").decode()
    metadata = plugin_wheel.read(f"{info}/METADATA").decode()
    assert "skyflow-vault-plugin = skyflow_vault_plugin.cli:main" in scripts
    assert "skyflow-emulator" not in scripts
    assert "starlette" not in metadata
    assert "uvicorn" not in metadata


def test_the_sdk_wheel_is_the_sdk_alone(tmp_path: Path) -> None:
    tree = tmp_path / "sdk"
    shutil.copytree(REPO / "sdk", tree, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with _wheel(tree, tmp_path / "wheel") as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"vault_plugin_sdk", "vault_plugin_sdk-0.1.0.dist-info"}
    # the SDK's public test helpers ship with it, for plugin authors' tests
    assert "vault_plugin_sdk/testing/__init__.py" in names
    assert "vault_plugin_sdk/py.typed" in names
