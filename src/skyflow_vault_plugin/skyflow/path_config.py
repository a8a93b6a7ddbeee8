"""``config``: the mount's Skyflow service account.

Exactly one credential source: ``credentials_json`` (stored by Vault, encrypted by its
barrier; seal-wrapped too on Vault Enterprise only) or ``credentials_file_path`` (read from
each server's disk when used; every HA node needs the file, and the key is then outside
Vault's encrypted storage). A read never returns the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import partial
from typing import Any

from vault_plugin_sdk import framework

from . import storage as store
from .errors import InvalidInput, SkyflowRejected, SkyflowUntrusted, UpstreamError
from .errors_http import to_logical
from .mount import HEALTH_CACHE_KEY, MountState
from .path_roles import validate_tags
from .storage import ConfigEntry, utc_now
from .telemetry import CONFIG_DELETE, CONFIG_READ, CONFIG_WRITE

MAX_DESCRIPTION = 1024
_FILE_NAME = re.compile(r"[\w./~-]{1,255}")

CONFIG_FIELDS = {
    "credentials_json": framework.Field(
        framework.FieldType.STRING_OR_MAP,
        "The service account's credentials JSON as Skyflow issues it (clientID, keyID, "
        "tokenURI, privateKey; camelCase or snake_case keys), as text or as an object. "
        "Stored encrypted by Vault (seal-wrapped as well on Vault Enterprise only); never "
        "returned. Exclusive with credentials_file_path.",
        max_length=65536,
    ),
    "credentials_file_path": framework.Field(
        framework.FieldType.STRING,
        "Absolute path of a credentials JSON file readable by the server, read when used. "
        "Only under <SKYFLOW_CREDENTIALS_DIR>/<mount path>/, and only when the operator set "
        "that variable. Every HA node needs the file, and the key is then outside Vault's "
        "encrypted storage. Exclusive with credentials_json.",
        max_length=4096,
    ),
    "description": framework.Field(
        framework.FieldType.STRING,
        "Free text describing this mount's account.",
        max_length=MAX_DESCRIPTION,
    ),
    "tags": framework.Field(
        framework.FieldType.COMMA_STRING_LIST,
        "Labels for operators (comma list).",
        default=[],
        validator=validate_tags,
    ),
    "validate_credentials": framework.Field(
        framework.FieldType.BOOL,
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


async def _exists(b: MountState, req: framework.Request, data: framework.FieldData) -> bool:
    return await b.get_config() is not None


async def _read(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    config = await b.get_config()
    return framework.Response(data=_public_view(config)) if config else None


async def _write(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    # Read-modify-write: two writes must not both start from version N.
    async with b.locks.hold(store.CONFIG_KEY):
        return await _update(b, req, data)


async def _update(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    current = await b.get_config()
    json_value, has_json = data.get_ok("credentials_json")
    path_value, has_path = data.get_ok("credentials_file_path")
    if has_json and has_path:
        raise framework.FieldError(
            "credentials_json", "give either credentials_json or credentials_file_path, not both"
        )
    if current is None and not (has_json or has_path):
        raise framework.FieldError(
            "credentials_json", "one of credentials_json or credentials_file_path is required"
        )
    try:
        if has_json:
            text = json_value if isinstance(json_value, str) else json.dumps(json_value)
            account = b.parse_json(text)
            updated = _base(current, credentials_type="json")
            updated = replace(updated, credentials_json=text, credentials_file_path=None)
        elif has_path:
            account = await b.load_file(path_value, req.mount_point)
            updated = _base(current, credentials_type="file_path")
            updated = replace(updated, credentials_json=None, credentials_file_path=path_value)
        else:
            assert current is not None
            account = await b.account(current, req.mount_point)
            updated = replace(current)
    except InvalidInput as exc:
        if has_json and isinstance(json_value, str) and _looks_like_file_name(json_value):
            raise framework.FieldError(
                exc.field,
                f"{exc.message}; '{json_value}' looks like a file name: to send the file's "
                f"contents write credentials_json=@{json_value} (with the @), or use "
                "credentials_file_path with an absolute path the server can read",
            ) from None
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
        # On a standby, storage is read-only and the host forwards the write to the active
        # node once the plugin says so: find out before spending a token exchange here.
        await store.probe_writable(b.storage)
        try:
            probe = await b.mint(account, [], None)
        except SkyflowRejected as exc:
            # The previous config stays in place: nothing has been written yet.
            # The error's own text already says "Skyflow rejected the token request (HTTP
            # ..., request id ...): <Skyflow's message>"; add only what it cannot know.
            raise framework.FieldError(
                source,
                f"{exc}; nothing was saved and the previous config stays in place. Check "
                "that this key (keyID) is active for the service account in Skyflow, and quote "
                "the request id to Skyflow support",
            ) from None
        except SkyflowUntrusted as exc:
            # Neither a retry nor skipping validation fixes trust: the text names the fix.
            raise framework.CodedError(503, f"could not validate the credentials: {exc}") from None
        except UpstreamError as exc:
            raise framework.CodedError(
                503,
                f"could not validate the credentials, Skyflow is unavailable: {exc} "
                "(retry, or write with validate_credentials=false)",
            ) from None
    await store.save_config(b.storage, updated)
    b.set_config(updated, account)
    if probe is not None:
        b.cache.put(HEALTH_CACHE_KEY, probe, (b.generations.config, 0))
    if current is not None and current.client_id and current.client_id != account.client_id:
        warnings.append(
            f"client_id changed from {current.client_id} to {account.client_id}: this mount "
            "now mints tokens for a different service account (a key rotation keeps the "
            "clientID and changes only the keyID). Every cached token was dropped; check "
            "that the roles' role_ids are granted to the new service account"
        )
    if updated.credentials_type == "file_path":
        warnings.append(
            "credentials_file_path: the key stays on disk, outside Vault's encrypted storage; "
            "every HA node needs the file at this path"
        )
    return framework.Response(data=_public_view(updated), warnings=warnings)


def _looks_like_file_name(value: str) -> bool:
    """Whether a credentials_json value is a file name the caller meant as ``@file``: one
    short word of path characters with a dot. A dot never occurs in base64, so a pasted
    line of key material is never taken for a file name, and so never echoed."""
    return bool(_FILE_NAME.fullmatch(value)) and "." in value


def _base(current: ConfigEntry | None, *, credentials_type: str) -> ConfigEntry:
    if current is None:
        return ConfigEntry(credentials_type=credentials_type)
    return replace(current, credentials_type=credentials_type)


async def _delete(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    async with b.locks.hold(store.CONFIG_KEY):
        await b.storage.delete(store.CONFIG_KEY)
        b.set_config(None, None)
    return None


def config_paths(b: MountState) -> list[framework.Path]:
    """The ``config`` path."""
    traced = b.telemetry.instrument
    write = traced(CONFIG_WRITE, partial(_write, b))
    return [
        framework.Path(
            pattern="config",
            fields=CONFIG_FIELDS,
            existence_check=partial(_exists, b),
            reject_unknown_fields=True,
            operations={
                framework.Operation.READ: framework.OperationHandler(
                    traced(CONFIG_READ, partial(_read, b)), "Read the config (never the key)."
                ),
                framework.Operation.CREATE: framework.OperationHandler(
                    write, "Configure the service account."
                ),
                framework.Operation.UPDATE: framework.OperationHandler(
                    write,
                    "Update the config; fields not given keep their value.",
                ),
                framework.Operation.DELETE: framework.OperationHandler(
                    traced(CONFIG_DELETE, partial(_delete, b)),
                    "Delete the config and forget every token.",
                ),
            },
            help_synopsis="Configure the Skyflow service account of this mount.",
            help_description="""
            The service account signs the assertions exchanged for bearer tokens. Give
            credentials_json (stored encrypted by Vault's barrier; seal-wrapped as well only on
            Vault Enterprise) or credentials_file_path (read from the server's disk when
            used). Each write bumps "version"; a read shows client_id,
            key_id, token_uri, credentials_type, description, tags, version and
            last_updated, never the private key. Writing or deleting the config drops every
            cached token of the mount.
            """,
        )
    ]
