"""A thin, typed, synchronous client for the OpenBao HTTP API, used by tests and tools.

Exception tree of the devtools package (all defined here so every module maps errors once)::

    OpenBaoError                  anything the harness reports
    ├── BaoConnectionError        the HTTP request did not complete (refused, reset, timed out)
    ├── BaoError                  the server answered with an unexpected HTTP status
    └── ServerError               a server process failed to start, exited, or did not get ready
                                  (raised by :mod:`skyflow_devtools.openbao`)

:meth:`BaoClient.request` is the raw escape hatch: it returns the :class:`httpx.Response` whatever
its status, so tests can assert exact status codes. Every other method raises :class:`BaoError`
on a status it does not expect. Redirects are never followed: a standby that cannot forward a
request answers ``307`` and the caller should see that.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import httpx

from skyflow_emulator.lifecycle import Closeable

__all__ = [
    "BaoClient",
    "BaoConnectionError",
    "BaoError",
    "OpenBaoError",
    "ServerError",
]


class OpenBaoError(Exception):
    """Base class of every error raised by the devtools harness."""


class BaoConnectionError(OpenBaoError):
    """The HTTP request to the server did not complete (connection refused, reset, timeout)."""


class ServerError(OpenBaoError):
    """A server process failed to start, exited unexpectedly, or did not become ready in time."""


class BaoError(OpenBaoError):
    """The server answered with an HTTP status the calling method did not expect.

    Attributes:
        status: the HTTP status code.
        errors: the ``errors`` list of the response body (empty if there was none).
        method: the HTTP method of the request.
        path: the API path (relative to ``/v1/``) of the request.
    """

    def __init__(self, status: int, errors: list[str], *, method: str = "", path: str = "") -> None:
        self.status = status
        self.errors = errors
        self.method = method
        self.path = path
        detail = "; ".join(errors) if errors else "(no error message)"
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")


def fail_status(response: httpx.Response, expected: int) -> NoReturn:
    """Fail a status expectation, showing the body only for an error: a success body may
    hold a token, which must not reach test output."""
    shown = "<a success body, not shown>" if response.is_success else response.text[:600]
    raise AssertionError(f"expected HTTP {expected}, got {response.status_code}: {shown}")


def error_text(response: httpx.Response, expected: int) -> str:
    """Check ``response`` has status ``expected`` and return its error messages joined."""
    if response.status_code != expected:
        fail_status(response, expected)
    try:
        body = response.json()
    except ValueError:
        return response.text
    errors = body.get("errors") if isinstance(body, dict) else None
    return " | ".join(str(e) for e in errors) if isinstance(errors, list) else response.text


def _errors_of(response: httpx.Response) -> list[str]:
    """The ``errors`` list of an OpenBao error body, or the raw body when it is not JSON."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return [text] if text else []
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list):
            return [str(e) for e in errors]
    return []


class BaoClient(Closeable):
    """Synchronous OpenBao API client over one pooled :class:`httpx.Client`.

    Paths are relative to ``/v1/`` (``"secret/data/x"``; a leading ``/`` or ``/v1/`` is
    tolerated). The token is sent as ``X-Vault-Token``. Close the client (or use it as a
    context manager) when done; clients handed out by
    :meth:`skyflow_devtools.openbao.OpenBaoServer.client` are closed by the server.

    Args:
        addr: base address, e.g. ``http://127.0.0.1:8200``.
        token: the token to send, if any.
        timeout: per-request timeout in seconds (plugin mounts can take a few seconds when a
            plugin process has to be spawned, hence the generous default).
        headers: extra headers sent with every request.
        transport: an httpx transport, for tests that do not want a network.
    """

    def __init__(
        self,
        addr: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._addr = addr.rstrip("/")
        self._token = token
        self._http = httpx.Client(
            base_url=f"{self._addr}/v1/",
            timeout=httpx.Timeout(timeout),
            headers=dict(headers or {}),
            transport=transport,
            follow_redirects=False,
        )

    @property
    def addr(self) -> str:
        """The server address this client talks to, e.g. ``http://127.0.0.1:8200``."""
        return self._addr

    @property
    def token(self) -> str | None:
        """The token sent with each request."""
        return self._token

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    # -- raw --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int | bool] | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request and return the raw response, whatever its status.

        Args:
            method: HTTP method, including OpenBao's ``LIST``.
            path: API path relative to ``/v1/``.
            json: JSON body, if any.
            params: query parameters.
            headers: extra headers for this request.
            token: overrides the client's token for this request.
            timeout: overrides the client's timeout (seconds) for this request.

        Raises:
            BaoConnectionError: the request did not complete.
        """
        all_headers = dict(headers or {})
        effective_token = token if token is not None else self._token
        if effective_token is not None:
            all_headers["X-Vault-Token"] = effective_token
        rel = self._relative(path)
        try:
            return self._http.request(
                method,
                rel,
                json=json,
                params=dict(params) if params is not None else None,
                headers=all_headers,
                timeout=httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise BaoConnectionError(f"{method} {rel} on {self._addr}: {exc!r}") from exc

    @staticmethod
    def _relative(path: str) -> str:
        rel = path.lstrip("/")
        return rel.removeprefix("v1/")

    def _call(
        self,
        method: str,
        path: str,
        *,
        expect: Iterable[int],
        json: Any = None,
        params: Mapping[str, str | int | bool] | None = None,
    ) -> httpx.Response:
        response = self.request(method, path, json=json, params=params)
        if response.status_code not in set(expect):
            raise BaoError(
                response.status_code,
                _errors_of(response),
                method=method,
                path=self._relative(path),
            )
        return response

    @staticmethod
    def _body(response: httpx.Response) -> dict[str, Any]:
        if response.status_code == 204 or not response.content:
            return {}
        body = response.json()
        if not isinstance(body, dict):
            raise BaoError(response.status_code, [f"unexpected JSON body: {body!r}"])
        return body

    # -- generic operations -----------------------------------------------------------------

    def read(
        self, path: str, params: Mapping[str, str | int | bool] | None = None
    ) -> dict[str, Any]:
        """``GET`` a path and return the whole response envelope (``data``, ``warnings``, ...).

        Raises:
            BaoError: any status other than 200, including 404 for "nothing there".
        """
        return self._body(self._call("GET", path, expect=(200,), params=params))

    def write(self, path: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST`` a JSON body to a path; returns the response envelope, ``{}`` for a 204.

        Raises:
            BaoError: any status other than 200 or 204.
        """
        return self._body(self._call("POST", path, expect=(200, 204), json=dict(data or {})))

    def list(self, path: str) -> builtins.list[str]:
        """``LIST`` a path and return its keys; an empty list when the server answers 404.

        OpenBao answers 404 for a list with no keys, so 404 is not an error here.

        Raises:
            BaoError: any status other than 200 or 404.
        """
        response = self._call("LIST", path, expect=(200, 404))
        if response.status_code == 404:
            return []
        keys = self._body(response).get("data", {}).get("keys", [])
        return [str(k) for k in keys]

    def delete(self, path: str) -> None:
        """``DELETE`` a path.

        Raises:
            BaoError: any status other than 200 or 204.
        """
        self._call("DELETE", path, expect=(200, 204))

    def health(self) -> dict[str, Any]:
        """``sys/health`` as a dict, whatever the status code (sealed, standby, ...).

        Raises:
            BaoConnectionError: the server is not listening.
            BaoError: the body is not the JSON health document.
        """
        response = self.request("GET", "sys/health")
        try:
            body = response.json()
        except ValueError as exc:
            raise BaoError(response.status_code, [response.text], path="sys/health") from exc
        if not isinstance(body, dict):
            raise BaoError(response.status_code, [response.text], path="sys/health")
        return body

    # -- mounts -----------------------------------------------------------------------------

    def enable_secrets(
        self,
        path: str,
        plugin_name: str,
        *,
        version: str | None = None,
        options: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> None:
        """Mount a secrets engine (``sys/mounts/<path>``), like ``bao secrets enable``.

        Args:
            path: the mount path, e.g. ``"skyflow"``.
            plugin_name: the catalog name (``type``), e.g. ``"kv"`` or ``"skyflow"``.
            version: the catalog version to mount (``plugin_version``); the server picks the
                only registered version when omitted.
            options: mount options, e.g. ``{"version": "2"}`` for kv-v2.
            config: mount config (``default_lease_ttl``, ``passthrough_request_headers``, ...).
            description: a human-readable description.
        """
        body: dict[str, Any] = {"type": plugin_name}
        if version is not None:
            body["plugin_version"] = version
        if options is not None:
            body["options"] = dict(options)
        if config is not None:
            body["config"] = dict(config)
        if description is not None:
            body["description"] = description
        self._call("POST", f"sys/mounts/{path.strip('/')}", expect=(200, 204), json=body)

    def disable_secrets(self, path: str) -> None:
        """Unmount a secrets engine (``DELETE sys/mounts/<path>``)."""
        self._call("DELETE", f"sys/mounts/{path.strip('/')}", expect=(200, 204))

    def mounts(self) -> dict[str, Any]:
        """The secrets-engine mount table (``sys/mounts``), keyed by ``path/``."""
        data = self.read("sys/mounts").get("data", {})
        return dict(data)

    def tune(self, path: str, **settings: Any) -> None:
        """Tune a mount (``sys/mounts/<path>/tune``), e.g.
        ``tune("skyflow", passthrough_request_headers=["traceparent"])``."""
        self._call("POST", f"sys/mounts/{path.strip('/')}/tune", expect=(200, 204), json=settings)

    # -- policies, tokens, auth -------------------------------------------------------------

    def write_policy(self, name: str, hcl: str) -> None:
        """Create or replace an ACL policy (``sys/policies/acl/<name>``)."""
        self._call("PUT", f"sys/policies/acl/{name}", expect=(200, 204), json={"policy": hcl})

    def create_token(
        self,
        policies: Iterable[str],
        *,
        ttl: str | None = None,
        no_default_policy: bool = False,
    ) -> str:
        """Create a child token with the given policies and return its ``client_token``."""
        body: dict[str, Any] = {
            "policies": list(policies),
            "no_default_policy": no_default_policy,
        }
        if ttl is not None:
            body["ttl"] = ttl
        auth = self._body(self._call("POST", "auth/token/create", expect=(200,), json=body))
        return str(auth["auth"]["client_token"])

    def enable_auth(self, path: str, method_type: str) -> None:
        """Enable an auth method (``sys/auth/<path>``), like ``bao auth enable``."""
        self._call(
            "POST", f"sys/auth/{path.strip('/')}", expect=(200, 204), json={"type": method_type}
        )

    def enable_userpass(self, path: str = "userpass") -> None:
        """Enable the userpass auth method at ``path``."""
        self.enable_auth(path, "userpass")

    def create_userpass_user(
        self, username: str, password: str, policies: Iterable[str], *, path: str = "userpass"
    ) -> None:
        """Create or update a userpass user with the given token policies."""
        self._call(
            "POST",
            f"auth/{path.strip('/')}/users/{username}",
            expect=(200, 204),
            json={"password": password, "token_policies": list(policies)},
        )

    def login_userpass(self, username: str, password: str, *, path: str = "userpass") -> str:
        """Log in with userpass and return the new token (this client's token is unchanged)."""
        body = self._body(
            self._call(
                "POST",
                f"auth/{path.strip('/')}/login/{username}",
                expect=(200,),
                json={"password": password},
            )
        )
        return str(body["auth"]["client_token"])

    # -- plugin catalog ---------------------------------------------------------------------

    def register_plugin(
        self,
        name: str,
        *,
        sha256: str,
        command: str,
        version: str | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        plugin_type: str = "secret",
    ) -> None:
        """Register a catalog entry (``sys/plugins/catalog/<type>/<name>``).

        ``env`` goes into the entry's ``env`` list as ``K=V`` strings: the 2.7.2 CLI has no
        ``-env`` flag, so the API is the only way to set it.
        """
        body: dict[str, Any] = {
            "sha256": sha256,
            "command": command,
            "args": list(args),
            "env": [f"{k}={v}" for k, v in (env or {}).items()],
        }
        if version is not None:
            body["version"] = version
        self._call("PUT", f"sys/plugins/catalog/{plugin_type}/{name}", expect=(200, 204), json=body)

    def plugin_info(
        self, name: str, *, version: str | None = None, plugin_type: str = "secret"
    ) -> dict[str, Any]:
        """A catalog entry's ``data`` (``sha256``, ``command``, ``version``, ...).

        An entry registered without a version is stored under the plugin's self-reported
        version and then needs ``version`` here (an unversioned lookup answers 404).
        """
        params = {"version": version} if version is not None else None
        body = self.read(f"sys/plugins/catalog/{plugin_type}/{name}", params=params)
        return dict(body.get("data", {}))

    def catalog(self) -> builtins.list[dict[str, Any]]:
        """Every catalog entry (the ``detailed`` list of ``sys/plugins/catalog``)."""
        detailed = self.read("sys/plugins/catalog").get("data", {}).get("detailed", [])
        return [dict(e) for e in detailed]

    def deregister_plugin(
        self, name: str, *, version: str | None = None, plugin_type: str = "secret"
    ) -> None:
        """Remove a catalog entry."""
        params = {"version": version} if version is not None else None
        response = self.request(
            "DELETE", f"sys/plugins/catalog/{plugin_type}/{name}", params=params
        )
        if response.status_code not in (200, 204):
            raise BaoError(
                response.status_code,
                _errors_of(response),
                method="DELETE",
                path=f"sys/plugins/catalog/{plugin_type}/{name}",
            )

    def reload_plugin(self, name: str, *, scope: str | None = None) -> str:
        """Reload every mount of a plugin (``PUT sys/plugins/reload/backend``, ``plugin=name``).

        Running processes are shut down and the mounts set up again in a new process, which
        picks up a re-registered sha256. Returns the ``reload_id`` the server answers with
        (2.7.2 returns one for both the local and the ``global`` scope).
        """
        body: dict[str, Any] = {"plugin": name}
        if scope is not None:
            body["scope"] = scope
        answer = self._body(
            self._call("PUT", "sys/plugins/reload/backend", expect=(200, 204), json=body)
        )
        return str(answer.get("data", {}).get("reload_id", ""))
