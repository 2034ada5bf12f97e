"""Shared fixtures: a real embedded broker on a free port with generated credentials."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
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


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user cache (the robot's exported ONNX graphs) in a folder of this test session, for
    in-process agents and the ``ars`` processes tests start alike; never the real one."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
