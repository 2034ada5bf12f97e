"""amqtt's ``Broker`` with our guards installed per connection (no global monkeypatching).

Hooks used (amqtt is pinned to 0.12.1; these are its private methods, checked by
tests/test_broker_security.py on every run):

- ``stream_connected``: wraps the TCP streams in ``GuardedReader``/``GuardedWriter`` and closes
  a connection at once when the listener is full (amqtt would park it on a semaphore forever).
  The reader checks each CONNECT with ``broker.admission`` (credentials, then the client id's
  owner) before amqtt's ``_initialize_client_session`` can delete or take over a session.
- ``_handle_message_delivery``: tags each published payload with its publish QoS.
- ``_get_handler``: installs ``BoundedPublish`` on a subscriber's handler the first time the
  broker delivers to it (amqtt 0.12 delivers at the subscription QoS, even above the publish QoS).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from broker.admission import Admission
from broker.framing import CONNACK_SERVER_UNAVAILABLE, CONNECT_LIMIT
from broker.guards import (
    BoundedPublish,
    GuardedReader,
    GuardedWriter,
    GuardLimits,
    GuardStats,
    QosCapped,
)

logger = logging.getLogger(__name__)


class _SnapshotDict(dict[str, list[tuple[Any, int]]]):
    """amqtt iterates its subscription table across awaits (``_run_broadcast``, retained
    messages on connect); a concurrent (un)subscribe then raised "dictionary changed size during
    iteration" and that message was lost for the remaining subscribers. Iterate over snapshots."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> list[tuple[str, list[tuple[Any, int]]]]:  # type: ignore[override]
        return list(super().items())


class HardenedBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """An amqtt broker whose connections pass through the guards in ``broker.guards``."""

    def __init__(
        self, config: dict[str, Any], limits: GuardLimits, admission: Admission | None = None
    ) -> None:
        super().__init__(config)
        self._subscriptions = _SnapshotDict()
        self.limits = limits
        self.admission = admission
        self.stats = GuardStats()

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        server = self._servers.get(listener_name)
        if server is not None and 0 < server.max_connections <= server.conn_count:
            self.stats.refused_full += 1
            logger.warning(
                "broker: listener %s full (%d connections): closing %s",
                listener_name,
                server.max_connections,
                writer.get_extra_info("peername"),
            )
            await self._refuse_busy(reader, writer)
            return
        guarded_writer = GuardedWriter(writer, self.limits, self.stats)
        guarded_reader = GuardedReader(
            reader, guarded_writer, self.limits, self.stats, self.admission
        )
        await self._client_connected(listener_name, guarded_reader, guarded_writer)

    async def _refuse_busy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Wait briefly for the CONNECT and answer CONNACK 0x03 (server unavailable), so a
        client reports "busy" at once instead of timing out; nothing is parsed or kept."""
        try:
            async with asyncio.timeout(min(self.limits.connect_timeout_s, 5.0)):
                await reader.read(CONNECT_LIMIT)
                writer.write(CONNACK_SERVER_UNAVAILABLE)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        message = wait_deliver.result()
        if message is not None and message.data is not None and message.qos is not None:
            message.data = QosCapped(message.data, message.qos)
        ok: bool = await super()._handle_message_delivery(client_session, handler, wait_deliver)
        return ok

    def _get_handler(self, session: Session) -> BrokerProtocolHandler | None:
        handler = super()._get_handler(session)
        if handler is not None and not isinstance(
            handler.__dict__.get("mqtt_publish"), BoundedPublish
        ):
            setattr(handler, "mqtt_publish", BoundedPublish(handler, self.limits, self.stats))  # noqa: B010
        return handler
