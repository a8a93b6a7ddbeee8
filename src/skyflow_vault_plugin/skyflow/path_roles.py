"""``roles/<name>``: named sets of Skyflow role IDs, and how their tokens are minted.

Several role IDs become one scope ``role:<a> role:<b>``. Bounds: 1 to 64 role IDs per role,
each 1 to 128 characters of letters, digits, ``_ . : -``; up to 32 tags of up to 64
characters; a description of up to 1024 characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict
from functools import partial
from typing import Any

from vault_plugin_sdk import framework

from . import storage as store
from .ctx import CTX_KEY
from .ctx_policy import CTX_MODES, MAX_CTX_KEYS, check_template
from .mount import MountState
from .responses import ACCESS_TOKEN_LIFETIME
from .storage import RoleEntry, utc_now
from .telemetry import ROLE_DELETE, ROLE_LIST, ROLE_READ, ROLE_WRITE

MAX_ROLE_IDS = 64
MAX_ROLE_ID_LENGTH = 128
MAX_TAGS = 32
MAX_TAG_LENGTH = 64
MAX_NAME_LENGTH = 128
ROLE_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_ROLE_ID_LENGTH}}}")
TAG = re.compile(rf"[^\s,]{{1,{MAX_TAG_LENGTH}}}")
MAX_TEMPLATE_LENGTH = 256
MAX_CTX_KEY_LENGTH = 128
# Control, format (e.g. the right-to-left override that disguises "exe.txt"), private-use,
# surrogate and unassigned characters: never meaningful in a label an operator reads.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})


def check_printable(text: str) -> None:
    """Refuse characters that do not print or that disguise text."""
    for char in text:
        if unicodedata.category(char) in _UNPRINTABLE:
            raise ValueError(f"contains the unprintable character U+{ord(char):04X}")


TOKEN_LIFETIME = ACCESS_TOKEN_LIFETIME  # Skyflow bearer tokens live 60 minutes


def validate_role_ids(ids: list[str]) -> None:
    """At least one and at most 64 IDs, each without blanks or odd characters."""
    if not ids:
        raise ValueError("at least one Skyflow role ID is required")
    if len(ids) > MAX_ROLE_IDS:
        raise ValueError(f"at most {MAX_ROLE_IDS} role IDs are allowed, got {len(ids)}")
    for role_id in ids:
        if not ROLE_ID.fullmatch(role_id):
            shown = role_id if len(role_id) <= 40 else role_id[:37] + "..."
            raise ValueError(
                f"role ID {shown!r} must be 1-{MAX_ROLE_ID_LENGTH} letters, digits, '_', '.', "
                "':' or '-'"
            )
    if len(set(ids)) != len(ids):
        raise ValueError("role IDs must not repeat")


def validate_tags(tags: list[str]) -> None:
    """At most 32 tags of at most 64 printable characters."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags are allowed")
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise ValueError(f"tag {tag[:40]!r} must be 1-{MAX_TAG_LENGTH} printable characters")
        check_printable(tag)


def validate_min_remaining_ttl(seconds: int) -> None:
    """Must leave room for reuse within Skyflow's 60-minute token lifetime."""
    if seconds >= TOKEN_LIFETIME:
        raise ValueError(
            f"must be less than the {TOKEN_LIFETIME} s token lifetime (got {seconds} s)"
        )


def validate_ctx_keys(keys: list[str]) -> None:
    """Keys Skyflow accepts in a ctx map."""
    if len(keys) > MAX_CTX_KEYS:
        raise ValueError(f"at most {MAX_CTX_KEYS} keys are allowed")
    for key in keys:
        if len(key) > MAX_CTX_KEY_LENGTH:
            raise ValueError(f"key {key[:40]!r}... is longer than {MAX_CTX_KEY_LENGTH}")
        if not CTX_KEY.fullmatch(key):
            raise ValueError(f"key {key[:40]!r} must match ^[a-zA-Z0-9_]+$")


def validate_ctx_template(template: dict[str, Any]) -> None:
    """Every entry a known identity placeholder."""
    if len(template) > MAX_CTX_KEYS:
        raise ValueError(f"at most {MAX_CTX_KEYS} keys are allowed")
    for key, value in template.items():
        if len(key) > MAX_CTX_KEY_LENGTH:
            raise ValueError(f"key {key[:40]!r}... is longer than {MAX_CTX_KEY_LENGTH}")
        if isinstance(value, str) and len(value) > MAX_TEMPLATE_LENGTH:
            raise ValueError(f"template for {key[:40]!r} is longer than {MAX_TEMPLATE_LENGTH}")
        check_template(key, value)


ROLE_FIELDS = {
    "name": framework.Field(
        framework.FieldType.NAME, "Name of the role.", max_length=MAX_NAME_LENGTH
    ),
    "role_ids": framework.Field(
        framework.FieldType.COMMA_STRING_LIST,
        f"Skyflow role IDs the token is scoped to (comma list or JSON list, 1-{MAX_ROLE_IDS}).",
        required=True,
        validator=validate_role_ids,
    ),
    "description": framework.Field(
        framework.FieldType.STRING, "Free text describing the role.", max_length=1024
    ),
    "tags": framework.Field(
        framework.FieldType.COMMA_STRING_LIST,
        "Labels for operators (comma list).",
        default=[],
        validator=validate_tags,
    ),
    "min_remaining_ttl": framework.Field(
        framework.FieldType.DURATION,
        "A cached token is served again only while it stays valid at least this long "
        "(seconds or a duration such as '10m'); below it a new token is minted. Must be "
        "less than the 60-minute token lifetime.",
        default=600,
        validator=validate_min_remaining_ttl,
    ),
    "cache_tokens": framework.Field(
        framework.FieldType.BOOL,
        "Reuse tokens across reads. Off: every read mints a new token from Skyflow.",
        default=True,
    ),
    "ctx_mode": framework.Field(
        framework.FieldType.STRING,
        "What ctx a caller may send: 'free' (any string or map), 'restricted' (a map with "
        "allowed_ctx_keys only) or 'none' (no ctx).",
        default="free",
        allowed_values=CTX_MODES,
    ),
    "allowed_ctx_keys": framework.Field(
        framework.FieldType.COMMA_STRING_LIST,
        "With ctx_mode=restricted, the map keys a caller may send.",
        default=[],
        validator=validate_ctx_keys,
    ),
    "required_ctx_keys": framework.Field(
        framework.FieldType.COMMA_STRING_LIST,
        "Map keys a caller must send.",
        default=[],
        validator=validate_ctx_keys,
    ),
    "ctx_template": framework.Field(
        framework.FieldType.MAP,
        "ctx keys filled from the caller's Vault identity, e.g. "
        '{"user": "{{identity.entity.metadata.employee_id}}"}; callers cannot override them. '
        "Placeholders: identity.entity.id, identity.entity.name, "
        "identity.entity.metadata.<key>, identity.entity.aliases.<mount accessor>.name, "
        "identity.entity.aliases.<mount accessor>.metadata.<key>, identity.groups.names.",
        default={},
        validator=validate_ctx_template,
    ),
}

_UPDATABLE = [k for k in ROLE_FIELDS if k != "name"]


def _public_view(role: RoleEntry) -> dict[str, Any]:
    view = asdict(role)
    view.pop("schema_version", None)
    return view


async def _exists(b: MountState, req: framework.Request, data: framework.FieldData) -> bool:
    return await b.get_role(data.get("name")) is not None


async def _read(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    role = await b.get_role(data.get("name"))
    return framework.Response(data=_public_view(role)) if role else None


async def _write(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    name = data.get("name")
    # Read-modify-write: a concurrent update of the role must not start from the same
    # entry and lose this one's fields.
    async with b.locks.hold(store.ROLE_PREFIX + name):
        return await _update(b, name, data)


async def _update(b: MountState, name: str, data: framework.FieldData) -> framework.Response | None:
    current = await b.get_role(name)
    if current is None:
        data.require("role_ids")
        role = RoleEntry(name=name, role_ids=[], created_at=utc_now())
    else:
        role = RoleEntry.from_json(asdict(current))
    for field_name in _UPDATABLE:
        if data.has(field_name):
            setattr(role, field_name, data.get(field_name))
    _check_ctx_rules(role)
    role.updated_at = utc_now()
    await store.save_role(b.storage, role)
    b.set_role(name, role)
    return framework.Response(data=_public_view(role))


def _check_ctx_rules(role: RoleEntry) -> None:
    allowed, required = set(role.allowed_ctx_keys), set(role.required_ctx_keys)
    templated = set(role.ctx_template)
    if role.ctx_mode == "restricted" and not required <= allowed:
        missing = sorted(required - allowed)[0]
        raise framework.FieldError(
            "required_ctx_keys", f"key {missing!r} is not in allowed_ctx_keys"
        )
    if role.ctx_mode == "none" and required:
        raise framework.FieldError("required_ctx_keys", "must be empty when ctx_mode is 'none'")
    if templated & (allowed | required):
        clash = sorted(templated & (allowed | required))[0]
        raise framework.FieldError(
            "ctx_template", f"key {clash!r} is templated and cannot also be sent by callers"
        )


async def _delete(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    name = data.get("name")
    async with b.locks.hold(store.ROLE_PREFIX + name):
        await b.storage.delete(store.ROLE_PREFIX + name)
        b.set_role(name, None)
    return None


async def _list(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    return framework.Response.list(await b.storage.list(store.ROLE_PREFIX))


def role_paths(b: MountState) -> list[framework.Path]:
    """The ``roles/`` and ``roles/<name>`` paths."""
    traced = b.telemetry.instrument
    write = traced(ROLE_WRITE, partial(_write, b))
    return [
        framework.Path(
            pattern="roles/?",
            operations={
                framework.Operation.LIST: framework.OperationHandler(
                    traced(ROLE_LIST, partial(_list, b)), "List the roles."
                )
            },
            help_synopsis="List the roles of this mount.",
        ),
        framework.Path(
            pattern=f"roles/{framework.name_part('name')}",
            fields=ROLE_FIELDS,
            existence_check=partial(_exists, b),
            reject_unknown_fields=True,
            operations={
                framework.Operation.READ: framework.OperationHandler(
                    traced(ROLE_READ, partial(_read, b)), "Read a role."
                ),
                framework.Operation.CREATE: framework.OperationHandler(write, "Create a role."),
                framework.Operation.UPDATE: framework.OperationHandler(
                    write, "Update a role; fields not given keep their value."
                ),
                framework.Operation.DELETE: framework.OperationHandler(
                    traced(ROLE_DELETE, partial(_delete, b)), "Delete a role and forget its tokens."
                ),
            },
            help_synopsis="Manage a role: the Skyflow role IDs its tokens are scoped to.",
            help_description=f"""
            A role names the Skyflow role IDs that scope its tokens; several IDs become one
            scope "role:<a> role:<b>". Bounds: 1-{MAX_ROLE_IDS} IDs of 1-{MAX_ROLE_ID_LENGTH}
            characters (letters, digits, '_', '.', ':', '-'); up to {MAX_TAGS} tags.

            Tokens are reused while they stay valid at least min_remaining_ttl (default 10
            minutes); cache_tokens=false mints a new token on every read.

            ctx policy: ctx_mode 'free' accepts any ctx, 'restricted' only a map with
            allowed_ctx_keys, 'none' no ctx. required_ctx_keys must be sent. ctx_template
            fills keys from the caller's Vault identity, which callers cannot override;
            for a per-user Skyflow policy, set e.g.
            ctx_template='{{"user_id": "{{{{identity.entity.metadata.user_id}}}}"}}' and
            ctx_mode=none.
            """,
        ),
    ]
