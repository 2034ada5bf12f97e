"""Brokers for tests: the embedded amqtt broker or a real Mosquitto on a free port, with
generated credentials and our ACL (the fixtures in ``tests/conftest.py`` wrap these)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.credentials import Credentials, ensure_credentials
from broker.embedded import EmbeddedBroker
from common.config import BrokerSettings, MqttSettings


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
