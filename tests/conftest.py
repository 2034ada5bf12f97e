"""Shared fixtures: a real embedded broker on a free port with generated credentials."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
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


@contextlib.asynccontextmanager
async def amqtt_broker(tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    """The embedded amqtt broker on a free port, password auth and ACL on."""
    data_dir = tmp_path / "broker-data"
    creds = ensure_credentials(data_dir, list(ROBOT_IDS))
    async with EmbeddedBroker(BrokerSettings(port=0), password_file=creds.password_file) as b:
        yield BrokerHandle(host="127.0.0.1", port=b.port, creds=creds, data_dir=data_dir)


@contextlib.asynccontextmanager
async def mosquitto_broker(tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    """A real Mosquitto (Debian package, installed by `make test`) with our users and ACL."""
    from broker.embedded import free_port
    from broker.mosquitto import write_mosquitto_config

    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):  # noqa: ASYNC240 (one stat at set-up)
        pytest.fail(
            "mosquitto is not installed: run `make system-deps` (apt-get install mosquitto)"
        )
    data_dir = tmp_path / "mosquitto-data"
    creds = ensure_credentials(data_dir, list(ROBOT_IDS))
    port = free_port()
    conf = write_mosquitto_config(
        data_dir / "conf",
        creds,
        list(ROBOT_IDS),
        port=port,
        run_as="root" if os.geteuid() == 0 else None,
    )
    proc = await asyncio.create_subprocess_exec(binary, "-c", str(conf))
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("mosquitto did not start")
        yield BrokerHandle(host="127.0.0.1", port=port, creds=creds, data_dir=data_dir)
    finally:
        proc.terminate()
        await proc.wait()


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
