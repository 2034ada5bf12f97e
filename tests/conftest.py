"""Shared fixtures: a real embedded broker on a free port with generated credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from tests.helpers.brokers import BrokerHandle, amqtt_broker, mosquitto_broker

torch.set_num_threads(1)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    async with amqtt_broker(tmp_path) as handle:
        yield handle


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    async with mosquitto_broker(tmp_path) as handle:
        yield handle


@pytest.fixture(params=["amqtt", "mosquitto"])
async def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    """Runs the test once on the embedded broker and once on a real Mosquitto."""
    factory = amqtt_broker if request.param == "amqtt" else mosquitto_broker
    async with factory(tmp_path) as handle:
        yield handle
