"""``ars server`` as its own process: retained online state, clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from common.schemas import ServerState
from tests.helpers.brokers import BrokerHandle
from tests.helpers.server import TOPICS, Peer


async def test_ars_server_runs_and_stops_on_sigterm(broker: BrokerHandle, tmp_path: Path) -> None:
    env = dict(os.environ, ARS_MQTT__URL=broker.url("server"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ars.cli", "server", "--data-dir", str(tmp_path / "server"),
        "--threads", "1",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(b"server: data"), line
        async with Peer(broker.mqtt("operator"), [TOPICS.server_state]) as peer:

            def state(online: bool) -> ServerState | None:
                for topic, payload in reversed(peer.received):
                    if topic == TOPICS.server_state:
                        st = ServerState.model_validate_json(payload)
                        return st if st.online is online else None
                return None

            await peer.wait_for(lambda t, p: state(True))
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            offline = await peer.wait_for(lambda t, p: state(False))
            assert offline.online is False
        assert (tmp_path / "server" / "server.sqlite3").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
