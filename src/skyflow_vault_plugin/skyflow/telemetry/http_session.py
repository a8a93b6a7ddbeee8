"""The OTLP exporters' HTTP session: the environment read once per URL, not on every export.

With ``trust_env`` (its default) a ``requests.Session`` reads the environment on every
request: its proxy settings, which means walking the whole process environment twice and
once more to see whether the URL bypasses them, the CA bundle variables, and the netrc file
(three ``stat`` calls when there is none). The span exporter posts a batch of spans every
fraction of a second under load, on a thread that shares the interpreter with the event
loop; those lookups were a quarter of each post's CPU with 42 variables in the environment,
and nearly two thirds with 302 (docs/performance.md, step 31). The host passes its own
environment on to the plugin, so the plugin's is as large as the server's.

:class:`CachedEnvironmentSession` asks requests the same questions once per URL, with the
same answers: requests' own ``merge_environment_settings`` and ``get_netrc_auth`` give them,
and are called again whenever what they depend on in the session or the request changes.
The one difference is in time: an environment variable or netrc file changed after the
first export to a URL is not seen, as the plugin's environment is fixed when the host starts
it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import requests
from opentelemetry.sdk.environment_variables import (
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER as CREDENTIAL_PROVIDER,
)
from opentelemetry.sdk.environment_variables import (
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER as METRICS_CREDENTIAL_PROVIDER,
)
from opentelemetry.sdk.environment_variables import (
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER as TRACES_CREDENTIAL_PROVIDER,
)
from requests.auth import AuthBase
from requests.models import PreparedRequest
from requests.utils import get_netrc_auth

__all__ = [
    "METRICS_CREDENTIAL_PROVIDER",
    "TRACES_CREDENTIAL_PROVIDER",
    "CachedEnvironmentSession",
    "exporter_session",
]


class _NoAuth(AuthBase):
    """What the netrc file gives when it has nothing for a URL: the request unchanged. Set
    on the request, it keeps requests from looking the file up again."""

    def __call__(self, r: PreparedRequest) -> PreparedRequest:
        return r


_NO_AUTH = _NoAuth()


_MAX_REMEMBERED = 64
"""URLs (and setting combinations) remembered; past that the memory starts again. An
exporter posts to one URL."""


def _frozen(value: object) -> object:
    """A hashable stand-in for a session or request setting (proxies are a dict, a client
    certificate may be a list)."""
    if isinstance(value, Mapping):
        return tuple(sorted(value.items()))
    if isinstance(value, list):
        return tuple(value)
    return value


class CachedEnvironmentSession(requests.Session):
    """A ``requests.Session`` that reads the environment's settings for a URL once.

    Proxies (``*_PROXY``, ``NO_PROXY``), the CA bundle (``REQUESTS_CA_BUNDLE``,
    ``CURL_CA_BUNDLE``) and netrc credentials apply as with a plain session; they are looked
    up at a URL's first request and remembered for the life of the session.
    """

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple[object, ...], dict[str, Any]] = {}
        self._netrc: dict[str, tuple[str, str] | _NoAuth] = {}

    def merge_environment_settings(
        self,
        url: Any,
        proxies: Any,
        stream: Any,
        verify: Any,
        cert: Any,
    ) -> dict[str, Any]:
        # The answer depends on the request's settings and the session's as well as the
        # environment: all of them are in the key.
        key = (
            url,
            _frozen(proxies),
            stream,
            _frozen(verify),
            _frozen(cert),
            self.trust_env,
            _frozen(self.proxies),
            self.stream,
            _frozen(self.verify),
            _frozen(self.cert),
        )
        settings = self._settings.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if len(self._settings) >= _MAX_REMEMBERED:
                self._settings.clear()
            self._settings[key] = settings
        # The caller may change what it gets: a copy, with a proxies dict of its own.
        return {**settings, "proxies": dict(settings["proxies"])}

    def prepare_request(self, request: requests.Request) -> PreparedRequest:
        # requests looks the netrc file up for every request without credentials when it
        # trusts the environment; the answer for the URL is given here instead.
        url = request.url
        if not (self.trust_env and not request.auth and not self.auth and isinstance(url, str)):
            return super().prepare_request(request)
        auth = self._netrc.get(url)
        if auth is None:
            if len(self._netrc) >= _MAX_REMEMBERED:
                self._netrc.clear()
            auth = self._netrc[url] = get_netrc_auth(url) or _NO_AUTH
        unset, request.auth = request.auth, auth
        try:
            return super().prepare_request(request)
        finally:
            request.auth = unset  # the caller's request as it came


def exporter_session(
    signal_provider: str, environ: Mapping[str, str] = os.environ
) -> CachedEnvironmentSession | None:
    """The session for an OTLP/HTTP exporter of one signal; None when the environment names
    a credential provider (``OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER`` or the
    signal's own ``signal_provider`` variable), whose session the exporter then loads."""
    if environ.get(CREDENTIAL_PROVIDER) or environ.get(signal_provider):
        return None
    return CachedEnvironmentSession()
