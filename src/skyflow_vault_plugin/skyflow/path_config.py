"""``config``: the mount's Skyflow service account.

Exactly one credential source: ``credentials_json`` (stored by Vault, seal-wrapped) or
``credentials_file_path`` (read from each server's disk when used; every HA node needs the
file, and the key is then not protected by Vault's seal). A read never returns the key.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from functools import partial
from typing import Any

from vault_plugin_sdk.framework import (
    CodedError,
    Field,
    FieldData,
    FieldError,
    FieldType,
    Operation,
    OperationHandler,
    Path,
    Request,
    Response,
)

from . import storage as store
from .backend import HEALTH_CACHE_KEY, SkyflowBackend
from .credentials import load_credentials_file, parse_credentials
from .errors import InvalidInput, SkyflowRejected, UpstreamError
from .errors_http import to_logical
from .path_roles import validate_tags
from .storage import ConfigEntry, utc_now
from .telemetry import CONFIG_DELETE, CONFIG_READ, CONFIG_WRITE

MAX_DESCRIPTION = 1024

CONFIG_FIELDS = {
    "credentials_json": Field(
        FieldType.STRING_OR_MAP,
        "The service account's credentials JSON as Skyflow issues it (clientID, keyID, "
        "tokenURI, privateKey; camelCase or snake_case keys), as text or as an object. "
        "Stored seal-wrapped; never returned. Exclusive with credentials_file_path.",
        max_length=65536,
    ),
    "credentials_file_path": Field(
        FieldType.STRING,
        "Absolute path of a credentials JSON file readable by the server, read when used. "
        "Every HA node needs the file, and the key is then not sealed by Vault. Exclusive "
        "with credentials_json.",
        max_length=4096,
    ),
    "description": Field(
        FieldType.STRING, "Free text describing this mount's account.", max_length=MAX_DESCRIPTION
    ),
    "tags": Field(
        FieldType.COMMA_STRING_LIST,
        "Labels for operators (comma list).",
        default=[],
        validator=validate_tags,
    ),
    "validate_credentials": Field(
        FieldType.BOOL,
        "Exchange the credentials for a token once before saving; a failure refuses the write "
        "and leaves the previous config in place.",
        default=True,
    ),
}


def _public_view(config: ConfigEntry) -> dict[str, Any]:
    view: dict[str, Any] = {
        "credentials_configured": True,
        "credentials_type": config.credentials_type,
        "client_id": config.client_id,
        "client_name": config.client_name or "",
        "key_id": config.key_id,
        "token_uri": config.token_uri,
        "description": config.description,
        "tags": list(config.tags),
        "version": config.version,
        "last_updated": config.last_updated,
    }
    if config.credentials_type == "file_path":
        view["credentials_file_path"] = config.credentials_file_path
    return view


async def _exists(b: SkyflowBackend, req: Request, data: FieldData) -> bool:
    return await b.get_config() is not None


async def _read(b: SkyflowBackend, req: Request, data: FieldData) -> Response | None:
    config = await b.get_config()
    return Response(data=_public_view(config)) if config else None


async def _write(b: SkyflowBackend, req: Request, data: FieldData) -> Response | None:
    current = await b.get_config()
    json_value, has_json = data.get_ok("credentials_json")
    path_value, has_path = data.get_ok("credentials_file_path")
    if has_json and has_path:
        raise FieldError(
            "credentials_json", "give either credentials_json or credentials_file_path, not both"
        )
    if current is None and not (has_json or has_path):
        raise FieldError(
            "credentials_json", "one of credentials_json or credentials_file_path is required"
        )
    try:
        if has_json:
            text = json_value if isinstance(json_value, str) else json.dumps(json_value)
            account = parse_credentials(text)
            updated = _base(current, credentials_type="json")
            updated = replace(updated, credentials_json=text, credentials_file_path=None)
        elif has_path:
            account = await asyncio.to_thread(load_credentials_file, path_value)
            updated = _base(current, credentials_type="file_path")
            updated = replace(updated, credentials_json=None, credentials_file_path=path_value)
        else:
            assert current is not None
            account = await b.account(current)
            updated = replace(current)
    except InvalidInput as exc:
        raise to_logical(exc) from None
    if data.has("description"):
        updated.description = data.get("description")
    if data.has("tags"):
        updated.tags = data.get("tags")
    updated.client_id = account.client_id
    updated.client_name = account.client_name
    updated.key_id = account.key_id
    updated.token_uri = account.token_uri
    updated.version = (current.version if current else 0) + 1
    updated.last_updated = utc_now()

    warnings: list[str] = []
    probe = None
    if (has_json or has_path) and data.get("validate_credentials"):
        source = "credentials_json" if has_json else "credentials_file_path"
        try:
            probe = await b.mint(account, [], None)
        except SkyflowRejected as exc:
            # The previous config stays in place: nothing has been written yet.
            raise FieldError(source, f"Skyflow rejected these credentials: {exc}") from None
        except UpstreamError as exc:
            raise CodedError(
                503,
                f"could not validate the credentials, Skyflow is unavailable: {exc} "
                "(retry, or write with validate_credentials=false)",
            ) from None
    await store.save_config(b.storage, updated)
    b.set_config(updated, account)
    if probe is not None:
        b.cache.put(HEALTH_CACHE_KEY, probe, (b.generations.config, 0))
    if updated.credentials_type == "file_path":
        warnings.append(
            "credentials_file_path: the key stays on disk, outside Vault's seal; every HA node "
            "needs the file at this path"
        )
    return Response(data=_public_view(updated), warnings=warnings)


def _base(current: ConfigEntry | None, *, credentials_type: str) -> ConfigEntry:
    if current is None:
        return ConfigEntry(credentials_type=credentials_type)
    return replace(current, credentials_type=credentials_type)


async def _delete(b: SkyflowBackend, req: Request, data: FieldData) -> Response | None:
    await b.storage.delete(store.CONFIG_KEY)
    b.set_config(None, None)
    return None


def config_paths(b: SkyflowBackend) -> list[Path]:
    """The ``config`` path."""
    traced = b.telemetry.instrument
    write = traced(CONFIG_WRITE, partial(_write, b))
    return [
        Path(
            pattern="config",
            fields=CONFIG_FIELDS,
            existence_check=partial(_exists, b),
            reject_unknown_fields=True,
            operations={
                Operation.READ: OperationHandler(
                    traced(CONFIG_READ, partial(_read, b)), "Read the config (never the key)."
                ),
                Operation.CREATE: OperationHandler(write, "Configure the service account."),
                Operation.UPDATE: OperationHandler(
                    write,
                    "Update the config; fields not given keep their value.",
                ),
                Operation.DELETE: OperationHandler(
                    traced(CONFIG_DELETE, partial(_delete, b)),
                    "Delete the config and forget every token.",
                ),
            },
            help_synopsis="Configure the Skyflow service account of this mount.",
            help_description="""
            The service account signs the assertions exchanged for bearer tokens. Give
            credentials_json (stored seal-wrapped) or credentials_file_path (read from the
            server's disk when used). Each write bumps "version"; a read shows client_id,
            key_id, token_uri, credentials_type, description, tags, version and
            last_updated, never the private key. Writing or deleting the config drops every
            cached token of the mount.
            """,
        )
    ]
