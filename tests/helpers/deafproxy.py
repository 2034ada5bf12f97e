"""A TCP proxy that can make an MQTT client deaf: connected, pinging, but sent no messages.

This is what a broker that dropped a client's session while keeping its socket looks like from
the client (amqtt 0.12.1 did that when another CONNECT claimed the same client id). ``deafen()``
makes every connection open now drop the broker's PUBLISH packets (PINGRESP, PUBACK, SUBACK
and the rest still pass); connections opened later hear normally, as after a reconnect.

    async with DeafProxy("127.0.0.1", broker.port) as proxy:
        link = MqttLink(MqttSettings(url=f"mqtt://u:p@127.0.0.1:{proxy.port}"), ...)
        proxy.deafen()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

PUBLISH = 3


class _Connection:
    def __init__(self) -> None:
        self.deaf = False
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []


class DeafProxy:
    """Forward one MQTT connection per client to ``host:port``; ``deafen()`` the open ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.dropped = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._open):
            for writer in conn.writers:
                writer.close()
            for task in conn.tasks:
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)

    def deafen(self) -> None:
        for conn in self._open:
            conn.deaf = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _Connection()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        conn.writers = [writer, up_writer]
        conn.tasks = [
            asyncio.create_task(self._copy(reader, up_writer)),
            asyncio.create_task(self._down(up_reader, writer, conn)),
        ]
        self._open.add(conn)
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._open.discard(conn)
            for w in conn.writers:
                w.close()
            for task in conn.tasks:
                task.cancel()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        """Broker to client, one packet at a time, dropping PUBLISH once deaf."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(1)
                length, shift, raw = 0, 0, bytearray()
                while True:
                    byte = (await reader.readexactly(1))[0]
                    raw.append(byte)
                    length += (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                if conn.deaf and header[0] >> 4 == PUBLISH:
                    self.dropped += 1
                    continue
                writer.write(header + raw + body)
                await writer.drain()
