"""The Skyflow secrets engine's backend: every path of a mount, in one place.

The paths (``path_*.py``) act on one mount's state (:class:`~.mount.MountState`); this
module wires them into the SDK's backend, and is the only one that imports them all.
"""

from __future__ import annotations

from vault_plugin_sdk.framework import Backend, BackendConfig, BackendFactory, SpecialPaths

from . import storage as store
from .mount import EngineSettings, MountState
from .path_config import config_paths
from .path_creds import creds_paths
from .path_health import health_paths
from .path_roles import role_paths

BACKEND_HELP = """\
The Skyflow secrets engine issues short-lived Skyflow bearer tokens, so that applications
never hold Skyflow service-account keys.

Write the mount's service account to "config", define roles under "roles/<name>" with the
Skyflow role IDs a token is scoped to, and read "creds/<role>" to get a token with its
expiry. "health" reports whether the mount works, down to Skyflow.
"""


def make_factory(settings: EngineSettings | None = None) -> BackendFactory:
    """A backend factory; ``settings`` default to the environment's."""

    async def build(config: BackendConfig) -> Backend:
        return build_backend(MountState(config, settings), config)

    return build


async def factory(config: BackendConfig) -> Backend:
    """Build the engine for one mount (called by the plugin server on Setup)."""
    return build_backend(MountState(config), config)


def build_backend(engine: MountState, config: BackendConfig) -> Backend:
    """The SDK backend serving ``engine``'s paths."""
    return Backend(
        help=BACKEND_HELP,
        storage=config.storage,
        special_paths=SpecialPaths(seal_wrap_storage=(store.CONFIG_KEY, store.ROLE_PREFIX)),
        paths=[
            *config_paths(engine),
            *role_paths(engine),
            *creds_paths(engine),
            *health_paths(engine),
        ],
        invalidate=engine.invalidate,
        cleanup=engine.cleanup,
        logger=config.logger,
    )
