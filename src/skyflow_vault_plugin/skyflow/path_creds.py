"""``creds/<role>``: a Skyflow bearer token for a role, with its expiry.

GET takes ``ctx`` from the query string, POST/PUT from the body: a string or a map, where
the JSON text of an object (what ``bao write ... ctx='{"k":"v"}'`` sends) is that map.
Tokens are data, not leases: Skyflow tokens cannot be revoked, so the response says when
the token expires (``expires_in``, ``expires_at``) and carries no lease.
"""

from __future__ import annotations

import time
from functools import lru_cache, partial
from typing import Any

from vault_plugin_sdk import framework

from .ctx import canonical_ctx
from .ctx_policy import CtxPolicy, Identity, resolve_ctx
from .errors import InvalidInput, SkyflowUnavailable, UpstreamError
from .errors_http import to_logical
from .mount import MountState
from .path_roles import MAX_NAME_LENGTH
from .responses import IssuedToken
from .storage import RoleEntry
from .telemetry import TOKEN_GENERATE, note_cache, note_ctx, note_error

CREDS_FIELDS = {
    # As long as a role name may be: a longer one cannot exist, and must not cost memory.
    "name": framework.Field(
        framework.FieldType.NAME, "Name of the role.", max_length=MAX_NAME_LENGTH
    ),
    "ctx": framework.Field(
        framework.FieldType.STRING_OR_MAP,
        "Context for Skyflow's context-aware policies: a string, or a JSON object whose keys "
        "match ^[a-zA-Z0-9_]+$ and become request.context.<key> in Skyflow. From the CLI send "
        'an object as JSON text: ctx=\'{"user_id":"u1"}\'. The role\'s ctx_mode, '
        "allowed_ctx_keys, required_ctx_keys and ctx_template apply.",
    ),
}


@lru_cache(maxsize=4096)
def _rfc3339(epoch: int) -> str:
    # Remembered: a cached token goes out many times with the same expiry, and formatting
    # a time was a few percent of a warm read's CPU (issue 12).
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def token_data(token: IssuedToken, now: float | None = None) -> dict[str, Any]:
    """The response fields describing ``token`` (the one actually returned)."""
    current = time.time() if now is None else now
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": int(token.expires_in(current)),
        "expires_at": _rfc3339(int(token.expires_at)),
    }


def _policy(role: RoleEntry) -> CtxPolicy:
    return CtxPolicy(
        mode=role.ctx_mode,
        allowed_keys=frozenset(role.allowed_ctx_keys),
        required_keys=frozenset(role.required_ctx_keys),
        template=dict(role.ctx_template) or None,
    )


async def _identity(b: MountState, req: framework.Request) -> Identity:
    if not req.entity_id:
        return Identity(entity=None)
    entity = await b.system_view.entity_info(req.entity_id)
    groups = await b.system_view.groups_for_entity(req.entity_id) if entity else []
    return Identity(entity=entity, groups=tuple(groups))


async def _issue(
    b: MountState, req: framework.Request, data: framework.FieldData
) -> framework.Response | None:
    name: str = data.get("name")
    # Taken before any await: a write that lands while this read waits must not let a
    # token minted from what the read loaded be stored as current.
    generation = (b.generations.config, b.generations.role(name))
    role = await b.get_role(name)
    if role is None:
        # 400, not 404, as Vault's own credential engines answer (aws "Role %q not found",
        # database "unknown role"): the CLI drops the body of a 404 on read and prints only
        # "No value found", hiding the reason. A read of roles/<name> stays a 404.
        note_error("not_found")
        raise framework.BadRequest(
            f"role {name!r} does not exist; this mount's roles are listed at "
            f"{req.mount_point.rstrip('/')}/roles/"
        )
    config = await b.get_config()
    if config is None:
        note_error("not_configured")
        raise framework.BadRequest(
            "this mount is not configured: write its service account to config"
        )
    try:
        ctx = await resolve_ctx(_policy(role), data.get("ctx"), partial(_identity, b, req))
        note_ctx(ctx)
        key = (name, canonical_ctx(ctx))
    except InvalidInput as exc:
        raise to_logical(exc) from None
    if role.cache_tokens:
        cached = b.cache.get(key, min_remaining=role.min_remaining_ttl)
        if cached is not None:
            note_cache("hit")
            return framework.Response(data=token_data(cached))

    async def mint() -> IssuedToken:
        account = await b.account(config, req.mount_point)
        token = await b.mint(account, role.role_ids, ctx)
        # Keep it only if neither the config nor the role changed while we waited.
        current = (b.generations.config, b.generations.role(name))
        if role.cache_tokens and current == generation:
            b.cache.put(key, token, generation)
        return token

    note_cache("miss" if role.cache_tokens else "off")
    try:
        if role.cache_tokens:
            token, _joined = await b.cache.single_flight(key, mint, generation)
            if _joined:
                note_cache("coalesced")
        else:
            token = await mint()
    except SkyflowUnavailable as exc:
        stale = b.cache.get_valid(key) if role.cache_tokens else None
        if stale is None:
            raise to_logical(exc) from None
        note_cache("stale")
        response = framework.Response(data=token_data(stale))
        response.add_warning(
            "Skyflow is unavailable; returning a cached token that is still valid but below "
            "the role's min_remaining_ttl"
        )
        return response
    except (InvalidInput, UpstreamError) as exc:
        raise to_logical(exc) from None
    return framework.Response(data=token_data(token))


def creds_paths(b: MountState) -> list[framework.Path]:
    """The ``creds/<name>`` path."""
    handler = b.telemetry.instrument(TOKEN_GENERATE, partial(_issue, b))
    return [
        framework.Path(
            pattern=f"creds/{framework.name_part('name')}",
            fields=CREDS_FIELDS,
            reject_unknown_fields=True,
            operations={
                framework.Operation.READ: framework.OperationHandler(
                    handler, "Get a token for the role."
                ),
                framework.Operation.UPDATE: framework.OperationHandler(
                    handler, "Get a token for the role, with ctx in the body."
                ),
            },
            help_synopsis="Get a Skyflow bearer token scoped to a role.",
            help_description="""
            Returns access_token, token_type, expires_in (seconds) and expires_at (RFC 3339).
            A token is reused while it stays valid for at least the role's
            min_remaining_ttl, so callers should refresh when expires_in runs low.

            Errors: 400 unknown role, mount not configured, or invalid ctx (the field is
            named); 502 Skyflow rejected the service account; 503 Skyflow unreachable, timing
            out, failing, rate-limiting (the whole mount pauses after a 429), answering
            something unreadable, or not trusted (SKYFLOW_CA_FILE). Both give the category,
            Skyflow's status and request ID; Skyflow's own message is in the server log. While
            Skyflow is unavailable, a cached token that is still valid is returned with a
            warning.
            """,
        )
    ]
