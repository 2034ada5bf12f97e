"""Shared fixtures: a real embedded broker on a free port with generated credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from broker.credentials import Credentials, ensure_credentials
from broker.embedded import EmbeddedBroker
from common.config import BrokerSettings, MqttSettings

torch.set_num_threads(1)


@dataclass
class BrokerHandle:
    """A running embedded broker and the credentials of its users."""

    host: str
    port: int
    creds: Credentials
    data_dir: Path

    def url(self, user: str = "server") -> str:
        return self.creds.url_for(user, self.host, self.port)

    def mqtt(self, user: str = "server") -> MqttSettings:
        return MqttSettings(url=self.url(user), reconnect_min_s=0.1, reconnect_max_s=0.5)


ROBOT_IDS = ("rover1", "rover2")


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    data_dir = tmp_path / "broker-data"
    creds = ensure_credentials(data_dir, list(ROBOT_IDS))
    async with EmbeddedBroker(BrokerSettings(port=0), password_file=creds.password_file) as b:
        yield BrokerHandle(host="127.0.0.1", port=b.port, creds=creds, data_dir=data_dir)
