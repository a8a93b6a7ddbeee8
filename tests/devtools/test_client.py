"""The OpenBao HTTP client, against a mock transport."""

from __future__ import annotations

import httpx
import pytest

from skyflow_devtools.client import BaoClient, BaoError


def test_client_maps_statuses() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-Vault-Token"] == "t"
        if request.url.path == "/v1/missing" and request.method == "LIST":
            return httpx.Response(404, json={"errors": []})
        if request.url.path == "/v1/bad":
            return httpx.Response(400, json={"errors": ["no such thing"]})
        if request.method == "POST":
            return httpx.Response(204)
        return httpx.Response(200, json={"data": {"keys": ["a", "b/"]}})

    with BaoClient("http://bao.test", "t", transport=httpx.MockTransport(handler)) as client:
        assert client.list("missing") == []
        assert client.list("/v1/present") == ["a", "b/"]
        assert client.write("x", {"a": 1}) == {}
        with pytest.raises(BaoError) as info:
            client.read("bad")
        assert info.value.status == 400
        assert info.value.errors == ["no such thing"]
        assert client.request("GET", "bad").status_code == 400
