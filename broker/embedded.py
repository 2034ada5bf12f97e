"""The embedded amqtt broker as an async context manager (``ars broker``, ``ars up``, tests).

It runs ``HardenedBroker``: amqtt 0.12.1 plus per-connection guards (packet size before reading,
prompt refusal of MQTT 5, credentials and client id owner checked before amqtt touches a
session, CONNECT and keepalive timeouts, bounded subscriber backlogs, QoS
never upgraded, connection limit that refuses instead of parking). See docs/security.md.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from broker.admission import Admission
from broker.framing import packet_limit
from broker.guards import GuardLimits, GuardStats
from broker.hardened import HardenedBroker
from common.config import BrokerSettings
from common.errors import ConfigError

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (for tests and port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_config(
    settings: BrokerSettings, *, port: int, password_file: Path | None, prefix: str = "ars"
) -> dict[str, Any]:
    """amqtt configuration: one TCP listener, our auth and ACL plugins, no $SYS chatter."""
    if not settings.allow_anonymous and password_file is None:
        raise ConfigError("broker.password_file is required when broker.allow_anonymous is false")
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": f"{settings.host}:{port}",
                "max_connections": settings.max_connections,
            }
        },
        "timeout_disconnect_delay": 0,
        "plugins": {
            "broker.plugins.ArsAuthPlugin": {
                "password_file": str(password_file) if password_file else None,
                "allow_anonymous": settings.allow_anonymous,
                # HardenedBroker's Admission verifies every CONNECT first: hash once, not twice
                "checked_on_connect": True,
            },
            "broker.plugins.ArsTopicPlugin": {
                "prefix": prefix,
                "anonymous_admin": settings.allow_anonymous,
            },
        },
    }


def guard_limits(settings: BrokerSettings) -> GuardLimits:
    """Guard limits from the settings: packets up to ``max_payload_bytes`` plus header room."""
    return GuardLimits(
        max_packet_bytes=packet_limit(settings.max_payload_bytes),
        backlog_bytes=max(32 * 1024 * 1024, 8 * settings.max_payload_bytes),
    )


class EmbeddedBroker:
    """Starts amqtt on enter, shuts it down on exit; ``port`` 0 picks a free port.

    ``limits`` overrides the guard limits derived from ``settings`` (tests use small ones).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        password_file: Path | None = None,
        prefix: str = "ars",
        limits: GuardLimits | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits or guard_limits(settings)
        self.port = settings.port or free_port(settings.host)
        self.password_file = password_file or settings.password_file
        self._config = broker_config(
            settings, port=self.port, password_file=self.password_file, prefix=prefix
        )
        self._broker: HardenedBroker | None = None
        self.stats = GuardStats()

    @property
    def url(self) -> str:
        return f"mqtt://{self.settings.host}:{self.port}"

    async def __aenter__(self) -> Self:
        admission = Admission.from_file(
            self.password_file, allow_anonymous=self.settings.allow_anonymous
        )
        self._broker = HardenedBroker(self._config, self.limits, admission)
        self.stats = self._broker.stats
        await self._broker.start()
        logger.info("embedded broker listening on %s:%d", self.settings.host, self.port)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
