"""The embedded amqtt broker as an async context manager (``ars broker``, ``ars up``, tests)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker

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
            },
            "broker.plugins.ArsTopicPlugin": {
                "prefix": prefix,
                "anonymous_admin": settings.allow_anonymous,
            },
        },
    }


class EmbeddedBroker:
    """Starts amqtt on enter, shuts it down on exit; ``port`` 0 picks a free port."""

    def __init__(
        self, settings: BrokerSettings, *, password_file: Path | None = None, prefix: str = "ars"
    ) -> None:
        self.settings = settings
        self.port = settings.port or free_port(settings.host)
        self.password_file = password_file or settings.password_file
        self._config = broker_config(
            settings, port=self.port, password_file=self.password_file, prefix=prefix
        )
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.settings.host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._broker = Broker(self._config)
        await self._broker.start()
        logger.info("embedded broker listening on %s:%d", self.settings.host, self.port)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
