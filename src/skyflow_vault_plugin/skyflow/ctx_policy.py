"""Per-role ``ctx`` policy: what a caller may send, and what the plugin fills in from the
caller's verified Vault identity.

Modes:

* ``free`` -- the caller may send any valid ``ctx`` (a string or a map), as the Go plugin does;
* ``restricted`` -- the caller may send only a map, and only the keys in ``allowed_ctx_keys``;
* ``none`` -- the caller may send no ``ctx`` at all.

In every mode ``required_ctx_keys`` must be present in what the caller sends, and
``ctx_template`` keys are filled from the caller's identity and can never be set by the
caller. Templates use Vault's ACL templating names:

* ``{{identity.entity.id}}``, ``{{identity.entity.name}}``
* ``{{identity.entity.metadata.<key>}}``
* ``{{identity.entity.aliases.<mount accessor>.name}}``
* ``{{identity.entity.aliases.<mount accessor>.metadata.<key>}}``
* ``{{identity.groups.names}}`` (the whole value: a list of group names)

Literal text around a placeholder is kept (``"user-{{identity.entity.name}}"``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vault_plugin_sdk.framework import Entity, Group

from .ctx import CTX_KEY
from .errors import InvalidContext

CTX_MODES = ("free", "restricted", "none")
MAX_CTX_KEYS = 64

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
_GROUP_NAMES = "identity.groups.names"
_PATTERNS = (
    re.compile(r"identity\.entity\.(id|name)"),
    re.compile(r"identity\.entity\.metadata\.([^.]+)"),
    re.compile(r"identity\.entity\.aliases\.([^.]+)\.name"),
    re.compile(r"identity\.entity\.aliases\.([^.]+)\.metadata\.([^.]+)"),
    re.compile(re.escape(_GROUP_NAMES)),
)


def check_template(key: str, template: object) -> None:
    """Validate one ``ctx_template`` entry at role write time (raises ``ValueError``)."""
    if not CTX_KEY.fullmatch(key):
        raise ValueError(f"key {key!r} must match ^[a-zA-Z0-9_]+$")
    if not isinstance(template, str) or not template:
        raise ValueError(f"template for {key!r} must be a non-empty string")
    names = _PLACEHOLDER.findall(template)
    if not names:
        raise ValueError(f"template for {key!r} has no {{{{identity...}}}} placeholder")
    for name in names:
        if not any(p.fullmatch(name) for p in _PATTERNS):
            raise ValueError(f"template for {key!r}: unknown placeholder {{{{{name}}}}}")
        if name == _GROUP_NAMES and template.strip() != "{{" + _GROUP_NAMES + "}}":
            raise ValueError(
                f"template for {key!r}: {{{{{_GROUP_NAMES}}}}} must be the whole value"
            )


@dataclass(frozen=True)
class CtxPolicy:
    """A role's ctx rules."""

    mode: str = "free"
    allowed_keys: frozenset[str] = frozenset()
    required_keys: frozenset[str] = frozenset()
    template: Mapping[str, str] | None = None

    @property
    def needs_identity(self) -> bool:
        """Whether resolving needs the caller's entity."""
        return bool(self.template)


@dataclass(frozen=True)
class Identity:
    """The caller's entity and groups, as the host reports them."""

    entity: Entity | None
    groups: tuple[Group, ...] = ()


IdentityLoader = Callable[[], Awaitable[Identity]]


async def resolve_ctx(policy: CtxPolicy, given: object, load_identity: IdentityLoader) -> Any:
    """The ctx to put into the assertion, or ``None``. Raises :class:`InvalidContext` (400)."""
    if given is None or (isinstance(given, str) and not given.strip()) or given == {}:
        given = None
    if policy.template and isinstance(given, Mapping):
        # Said first, whatever the mode: the caller tried to set what identity decides.
        for key in sorted(given):
            if key in policy.template:
                raise InvalidContext(
                    f"key {key!r} is filled from the caller's identity and cannot be set",
                    field=f"ctx.{key}",
                )
    if policy.mode == "none" and given is not None:
        raise InvalidContext("this role does not accept a ctx (ctx_mode is 'none')")
    if isinstance(given, str) and (policy.mode == "restricted" or policy.template):
        raise InvalidContext(
            "this role accepts ctx only as a map of keys: send a JSON object, e.g. "
            'bao write <mount>/creds/<role> ctx=\'{"user_id":"u1"}\', or with curl '
            '-X POST -d \'{"ctx": {"user_id": "u1"}}\' $BAO_ADDR/v1/<mount>/creds/<role>'
        )
    sent: dict[str, Any] = dict(given) if isinstance(given, Mapping) else {}
    if policy.mode == "restricted":
        for key in sorted(sent):
            if key not in policy.allowed_keys:
                raise InvalidContext(
                    f"key {key!r} is not allowed for this role", field=f"ctx.{key}"
                )
    for key in sorted(policy.required_keys):
        if key not in sent:
            raise InvalidContext(f"required key {key!r} is missing", field=f"ctx.{key}")
    if not policy.template:
        return given
    identity = await load_identity()
    resolved = dict(sent)
    for key, template in policy.template.items():
        resolved[key] = _render(key, template, identity)
    return resolved


def _render(key: str, template: str, identity: Identity) -> Any:
    if template.strip() == "{{" + _GROUP_NAMES + "}}":
        _entity(key, identity)
        return sorted(group.name for group in identity.groups)

    def substitute(match: re.Match[str]) -> str:
        return _lookup(key, match.group(1), identity)

    return _PLACEHOLDER.sub(substitute, template)


def _entity(key: str, identity: Identity) -> Entity:
    if identity.entity is None:
        raise _unresolved(
            key,
            "the caller's token has no identity entity (log in through an auth method; root "
            "tokens have none)",
        )
    return identity.entity


def _lookup(key: str, name: str, identity: Identity) -> str:
    entity = _entity(key, identity)
    if name == "identity.entity.id":
        return entity.id
    if name == "identity.entity.name":
        return entity.name
    parts = name.split(".")
    if parts[2] == "metadata":
        value = entity.metadata.get(parts[3])
        if value is None:
            raise _unresolved(key, f"the caller's entity has no metadata {parts[3]!r}")
        return value
    accessor = parts[3]
    alias = next((a for a in entity.aliases if a.mount_accessor == accessor), None)
    if alias is None:
        raise _unresolved(key, f"the caller's entity has no alias on auth mount {accessor!r}")
    if len(parts) == 5:  # ...aliases.<accessor>.name
        return alias.name
    value = alias.metadata.get(parts[5])
    if value is None:
        raise _unresolved(key, f"the caller's alias on {accessor!r} has no metadata {parts[5]!r}")
    return value


def _unresolved(key: str, why: str) -> InvalidContext:
    return InvalidContext(f"ctx_template key {key!r} cannot be resolved: {why}", field=f"ctx.{key}")
