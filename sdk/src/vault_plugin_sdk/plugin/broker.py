"""The go-plugin broker: learns where the host serves Storage/SystemView for each mount.

The host opens one bidirectional ``GRPCBroker/StartStream`` per process and sends a
``ConnInfo`` for every ``Setup``; the two may arrive in either order, so addresses are
buffered by broker ID until someone asks for them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from grpclib.const import Cardinality, Handler

from .pb import goplugin_pb2

if TYPE_CHECKING:
    from grpclib.server import Stream

    from .broker_channel import BrokerChannel

log = logging.getLogger("sdk.broker")

BROKER_WAIT_SECONDS = 5.0  # go-plugin's own limit for the same wait


class Broker:
    """Serves ``plugin.GRPCBroker`` and dials the host's per-mount servers."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/plugin.GRPCBroker/StartStream": Handler(
                self.StartStream,
                Cardinality.STREAM_STREAM,
                goplugin_pb2.ConnInfo,
                goplugin_pb2.ConnInfo,
            )
        }

    def __init__(self, client_tls: ssl.SSLContext | None) -> None:
        self._client_tls = client_tls
        self._addresses: dict[int, asyncio.Future[tuple[str, str]]] = {}

    def _slot(self, service_id: int) -> asyncio.Future[tuple[str, str]]:
        slot = self._addresses.get(service_id)
        if slot is None:
            slot = asyncio.get_running_loop().create_future()
            self._addresses[service_id] = slot
        return slot

    def deliver(self, service_id: int, network: str, address: str) -> None:
        """Record where the host serves ``service_id``."""
        slot = self._slot(service_id)
        if not slot.done():
            slot.set_result((network, address))

    async def StartStream(  # noqa: N802 - the gRPC method name
        self, stream: Stream[goplugin_pb2.ConnInfo, goplugin_pb2.ConnInfo]
    ) -> None:
        await stream.send_initial_metadata()
        async for info in stream:
            log.debug("broker connection info", extra={"service_id": info.service_id})
            self.deliver(info.service_id, info.network, info.address)

    async def dial(self, service_id: int) -> BrokerChannel:
        """A channel to the host's server for ``service_id``, waiting for its address.

        The channel connects at its first call."""
        slot = self._slot(service_id)
        try:
            network, address = await asyncio.wait_for(asyncio.shield(slot), BROKER_WAIT_SECONDS)
        except TimeoutError:
            raise TimeoutError(f"timeout waiting for broker connection {service_id}") from None
        finally:
            self._addresses.pop(service_id, None)
        from .broker_channel import BrokerChannel  # only once a mount is set up

        return BrokerChannel(network, address, self._client_tls)
