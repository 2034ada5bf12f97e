"""``ars up`` as a new user runs it: a quiet start and a Ctrl-C that stops the agents first.

``ars up`` runs in its own session and gets SIGINT on its whole process group, as a terminal's
Ctrl-C sends it; the robot and server must be online first, so their goodbyes are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

from broker.credentials import ensure_credentials
from broker.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
RID = "rover1"


async def _online(url: str, topics: list[str], timeout: float = 120.0) -> None:
    """Until every retained state topic in ``topics`` says ``"online": true``."""
    from common.config import MqttSettings
    from common.mqtt import make_client

    seen: set[str] = set()
    async with asyncio.timeout(timeout), make_client(MqttSettings(url=url)) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if b'"online":true' in payload.replace(b" ", b""):
                seen.add(str(message.topic))
            if seen >= set(topics):
                return


async def test_up_starts_quietly_and_ctrl_c_stops_agents_then_broker(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    argv = [sys.executable, "-m", "ars.cli", "up", "--no-web", "--port", str(port)]
    argv += ["--data-dir", str(data), "--log-level", "INFO"]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    lines: list[str] = []
    up = asyncio.Event()

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            if "is up" in lines[-1]:
                up.set()

    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(up.wait(), 60)
        creds = ensure_credentials(data, [RID])  # the ones `ars up` wrote on first run
        await _online(
            creds.url_for("operator", "127.0.0.1", port),
            ["ars/server/state", f"ars/robots/{RID}/state"],
        )
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        await asyncio.wait_for(proc.wait(), 60)
        await asyncio.wait_for(reader, 10)
    finally:
        reader.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = "\n".join(lines)
    assert proc.returncode == 0, text[-3000:]
    assert "is up" in text
    # no connection probe at start-up: amqtt logs an error for a TCP connect with no CONNECT
    assert "No data from" not in text, text[-3000:]
    assert "level=error" not in text, text[-3000:]
    # the agents stop while the broker still runs: no reconnect attempts, one line each
    assert not re.search(r"refused|retry|reconnect", text, re.IGNORECASE), text[-3000:]
    # (an agent busy in a worker thread at start-up on a loaded machine may need the SIGKILL
    # after 15 s: still its own line, still before the broker's)
    pattern = r"^ars up: (\w+) (stopped \(exit 0\)|killed after 15 s)$"
    stopped = [name for name, _ in re.findall(pattern, text, re.MULTILINE)]
    assert sorted(stopped[:-1]) == ["robot", "server"], text[-3000:]
    assert stopped[-1] == "broker" and "ars up: broker stopped (exit 0)" in text, text[-3000:]
