"""A TCP proxy that injects faults between an MQTT client and the broker (tests and benches).

``FaultProxy`` listens on 127.0.0.1 (a free port, ``.port``), forwards bytes both ways with an
added one-way latency, and closes each connection at a random time (exponential, mean
1 / ``drop_rate_per_s``), both deterministic per ``seed`` and connection number. It is bounded:
at most ``max_connections`` at once, at most ``queue_chunks`` chunks in flight per direction
(the reader waits), and it shuts itself down after ``lifetime_s`` even if a test forgets to.

    async with FaultProxy("127.0.0.1", broker.port, drop_rate_per_s=1.0, delay_ms=20) as proxy:
        link = MqttLink(MqttSettings(url=f"mqtt://u:p@127.0.0.1:{proxy.port}"), ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    drops: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy:
    """Forward, delay and randomly cut TCP connections to ``target_host:target_port``."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        drop_rate_per_s: float = 0.0,
        delay_ms: float = 0.0,
        seed: int = 0,
        max_connections: int = 32,
        queue_chunks: int = 64,
        lifetime_s: float = 120.0,
    ) -> None:
        if drop_rate_per_s < 0 or delay_ms < 0:
            raise ValueError("drop_rate_per_s and delay_ms must be >= 0")
        self.target = (target_host, target_port)
        self.drop_rate_per_s = drop_rate_per_s
        self.delay_s = delay_ms / 1000
        self.seed = seed
        self.max_connections = max_connections
        self.queue_chunks = queue_chunks
        self.lifetime_s = lifetime_s
        self.stats = ProxyStats()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._expiry = asyncio.get_running_loop().call_later(self.lifetime_s, self._expire)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._expiry is not None:
            self._expiry.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _expire(self) -> None:
        logger.warning("fault proxy on port %d: lifetime over, stopping", self.port)
        self._closer = asyncio.ensure_future(self.close())

    def drop_all(self) -> None:
        """Cut every open connection now (a deterministic fault for tests)."""
        for task in list(self._tasks):
            task.cancel()

    def _drop_after(self, number: int) -> float | None:
        if self.drop_rate_per_s <= 0:
            return None
        return random.Random(f"{self.seed}:{number}").expovariate(self.drop_rate_per_s)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            self.stats.refused += 1
            writer.transport.abort()
            return
        self.stats.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer, self.stats.connections)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            return
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, up=True)),
            asyncio.create_task(self._pump(up_reader, writer, up=False)),
        ]
        try:
            drop_after = self._drop_after(number)
            done, _ = await asyncio.wait(
                pumps, timeout=drop_after, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                self.stats.drops += 1
                logger.info("fault proxy: dropping connection %d after %.2fs", number, drop_after)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.transport.abort()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, up: bool
    ) -> None:
        """Copy with latency: a reader fills a bounded queue, a writer sends each chunk when due."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self.queue_chunks)

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                dst.write(data)
                await dst.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await src.read(64 * 1024)
                await queue.put((loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        except ConnectionError:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
