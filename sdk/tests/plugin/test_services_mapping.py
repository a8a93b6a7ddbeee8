"""The services list their methods themselves; the lists must match the generated code."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from grpclib.health.v1 import health_grpc

from vault_plugin_sdk.plugin import services
from vault_plugin_sdk.plugin.broker import Broker
from vault_plugin_sdk.plugin.pb import (
    backend_grpc,
    goplugin_grpc,
    multiplexing_grpc,
    version_grpc,
)


async def _factory(config: Any) -> Any:
    raise AssertionError("not called")


def _services() -> list[tuple[object, Any]]:
    return [
        (services.BackendService(_factory, Broker(None)), backend_grpc.BackendBase),
        (Broker(None), goplugin_grpc.GRPCBrokerBase),
        (services.MultiplexingService(True), multiplexing_grpc.PluginMultiplexingBase),
        (services.VersionService("v1.0.0"), version_grpc.PluginVersionBase),
        (services.ControllerService(lambda: None), goplugin_grpc.GRPCControllerBase),
        (services.StdioService(), goplugin_grpc.GRPCStdioBase),
        (services.HealthService(), health_grpc.HealthBase),
    ]


@pytest.mark.parametrize(("service", "generated"), _services())
def test_mapping_matches_the_generated_base(service: Any, generated: Any) -> None:
    ours = service.__mapping__()
    theirs = generated.__mapping__(service)
    assert ours.keys() == theirs.keys()
    for path, handler in theirs.items():
        mine = ours[path]
        assert mine.func == handler.func, path
        assert mine.cardinality is handler.cardinality, path
        assert mine.request_type is handler.request_type, path
        assert mine.reply_type is handler.reply_type, path


def test_serving_imports_no_grpc_client_before_the_handshake() -> None:
    code = (
        "import sys, vault_plugin_sdk.plugin.serve\n"
        "print(sorted(m for m in ('grpclib.client', 'h2.connection') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
