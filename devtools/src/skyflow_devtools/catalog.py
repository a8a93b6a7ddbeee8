"""The plugin catalog as an operator uses it: put an executable into a server's
``plugin_directory``, register its sha256, read back the stored version, reload it.

Facts observed on OpenBao 2.7.2:

* Registering a file that is not a plugin *succeeds* (the version probe fails, is logged at
  DEBUG and ignored; the entry is stored with an empty version). Enabling a mount of it fails
  with HTTP 400 "invalid backend version: ... Unrecognized remote plugin message".
* ``PUT sys/plugins/reload/backend`` with ``{"plugin": NAME}`` answers 200 with a
  ``reload_id`` (also without mounts, and for ``scope=global``); 400 for a name that is not in
  the catalog.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Required, TypedDict, Unpack

from .client import BaoClient

if TYPE_CHECKING:
    from .openbao import OpenBaoServer

__all__ = [
    "PluginInfo",
    "PluginSpec",
    "catalog_version",
    "install_plugin",
    "install_plugin_on",
    "python_launcher",
    "reload_plugin",
    "write_plugin_executable",
]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# -- plugin files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginInfo:
    """A plugin installed into a server's ``plugin_directory`` and registered in its catalog.

    Attributes:
        name: the catalog name.
        sha256: hex SHA-256 of the file, as registered.
        path: the file in the plugin directory (for a cluster: the leader's copy).
        version: the catalog version: the one given at registration, else the plugin's
            self-reported one (``None`` when the entry has no version).
        command: the catalog ``command`` (the file name inside ``plugin_directory``).
        plugin_type: ``"secret"`` (or ``"auth"``/``"database"``).
    """

    name: str
    sha256: str
    path: Path
    version: str | None
    command: str
    plugin_type: str = "secret"


def python_launcher(module: str, function: str = "main") -> bytes:
    """A launcher script that runs ``module.function()`` under this interpreter.

    The shebang is :data:`sys.executable` (the venv's python), so the venv's packages are
    importable by the plugin. Note that the registered sha256 then covers only this script.
    """
    if not _IDENT.match(module) or not _IDENT.match(function) or "." in function:
        raise ValueError(f"not a module/function name: {module!r}, {function!r}")
    return (
        f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
    ).encode()


def write_plugin_executable(
    plugin_dir: Path, filename: str, executable: bytes | Path
) -> tuple[Path, str]:
    """Put an executable into ``plugin_dir`` with mode 0755; return its path and hex sha256.

    The file is written next to its final name and renamed into place, so replacing a plugin
    whose old build is still running does not fail with "text file busy".
    """
    if "/" in filename or filename in ("", ".", ".."):
        raise ValueError(f"plugin file name must be a plain file name: {filename!r}")
    content = executable.read_bytes() if isinstance(executable, Path) else executable
    plugin_dir.mkdir(parents=True, exist_ok=True)
    final = plugin_dir / filename
    tmp = plugin_dir / f".{filename}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_bytes(content)
        tmp.chmod(0o755)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return final, hashlib.sha256(content).hexdigest()


# -- the catalog -------------------------------------------------------------------------------


class PluginSpec(TypedDict, total=False):
    """What to install and how to register it (the keyword arguments of :func:`install_plugin`
    and :func:`~skyflow_devtools.cluster.install_plugin_cluster`).

    Attributes:
        name: the catalog name (required).
        executable: the file's content, or a file to copy (required).
        version: the catalog version to register; ``None`` lets the plugin report its own.
        env: the catalog ``env`` (registered as a ``K=V`` list).
        args: the catalog ``args``.
        filename: the file name in ``plugin_directory`` (default: ``name``).
        plugin_type: ``"secret"`` (default), ``"auth"`` or ``"database"``.
    """

    name: Required[str]
    executable: Required[bytes | Path]
    version: str | None
    env: Mapping[str, str] | None
    args: Sequence[str]
    filename: str | None
    plugin_type: str


def install_plugin(server: OpenBaoServer, **spec: Unpack[PluginSpec]) -> PluginInfo:
    """Install a plugin like an operator: copy it into ``plugin_directory``, register it.

    The file (``filename``, default ``name``) gets mode 0755; its sha256 is registered at
    ``sys/plugins/catalog/<plugin_type>/<name>`` with ``command``, ``args``, ``env`` (``K=V``
    list) and ``version`` when given (see :class:`PluginSpec`).

    Raises:
        BaoError: the catalog refused the entry. Note that 2.7.2 accepts a file that is not a
            plugin at all; that only fails when a mount is enabled.
    """
    return install_plugin_on([server], server, **spec)


def install_plugin_on(
    nodes: Sequence[OpenBaoServer], registrar: OpenBaoServer, **spec: Unpack[PluginSpec]
) -> PluginInfo:
    """Copy a plugin into every node's ``plugin_directory``, register it once through
    ``registrar`` (the catalog is shared by a cluster's nodes), and record it on every node.

    Returns ``registrar``'s :class:`PluginInfo`.

    Raises:
        BaoError: the catalog refused the entry.
    """
    name = spec["name"]
    command = spec.get("filename") or name
    plugin_type = spec.get("plugin_type", "secret")
    version = spec.get("version")
    paths: dict[int, Path] = {}
    digest = ""
    for node in nodes:
        paths[id(node)], digest = write_plugin_executable(
            node.plugin_dir, command, spec["executable"]
        )
    client = registrar.client()
    client.register_plugin(
        name,
        sha256=digest,
        command=command,
        version=version,
        args=spec.get("args", ()),
        env=spec.get("env"),
        plugin_type=plugin_type,
    )
    stored = version or catalog_version(client, name, digest, plugin_type)
    for node in nodes:
        node.record_plugin(
            PluginInfo(
                name=name,
                sha256=digest,
                path=paths[id(node)],
                version=stored,
                command=command,
                plugin_type=plugin_type,
            )
        )
    return registrar.plugins[name]


def catalog_version(
    client: BaoClient, name: str, sha256: str, plugin_type: str = "secret"
) -> str | None:
    """The version the catalog stored for an entry registered without one.

    2.7.2 stores such an entry under the plugin's self-reported version (empty when the
    plugin reports none, or is not a plugin at all). ``None`` when it is empty or not found.
    """
    for entry in client.catalog():
        if (
            entry.get("name") == name
            and entry.get("type") == plugin_type
            and entry.get("sha256") == sha256
        ):
            return str(entry.get("version") or "") or None
    return None


def reload_plugin(server: OpenBaoServer, name: str, *, scope: str | None = None) -> str:
    """Reload every mount of plugin ``name`` (``sys/plugins/reload/backend``); the reload id."""
    return server.client().reload_plugin(name, scope=scope)
