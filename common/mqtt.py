"""MQTT connection for agents: a long-lived link that reconnects with backoff.

``MqttLink`` is an async context manager owning one background task that connects, subscribes,
announces (retained state, the caller's ``on_connect``), and pumps messages into a bounded queue
until the connection breaks, then reconnects with exponential backoff. Agents keep working while
the broker is away: ``publish`` waits for the link (QoS1) or drops (QoS0, latest-wins data).

A connection can also stay up while the broker no longer delivers to it (a broker that dropped
its session, as amqtt 0.12.1 did when another client claimed the same id). With a
``heartbeat_topic`` the link publishes a token there every quarter keepalive and expects it
back; silent for 1.5 keepalives (so noticed within two), it reconnects, resubscribes and calls
``on_deaf`` once connected again, so the agent can say so in its event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

import aiomqtt

from common.clientid import owned_client_id
from common.config import MqttSettings
from common.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_broker_url(
    url: str, username: str | None = None, password: str | None = None
) -> BrokerAddress:
    """``mqtt://user:pass@host:port`` (or ``mqtts://``) into parts; ConfigError if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "mqtts", "tcp", "ssl"}:
        raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in {"mqtts", "ssl"}
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: bad port") from exc
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r}: no host")
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        username=username
        if username is not None
        else (unquote(parts.username) if parts.username else None),
        password=password
        if password is not None
        else (unquote(parts.password) if parts.password else None),
        tls=tls,
    )


def payload_bytes(payload: object) -> bytes:
    """A received payload as bytes (aiomqtt types it as bytes, str, number or None)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{parts.username}:***@{host}"


def make_client(
    settings: MqttSettings,
    *,
    client_id: str | None = None,
    will: aiomqtt.Will | None = None,
    max_inflight: int = 32,
) -> aiomqtt.Client:
    """An aiomqtt client for the configured broker (MQTT 3.1.1, TLS for mqtts://).

    The wire client id is ``<user>:<client_id>`` (``common.clientid``): brokers refuse an id
    that belongs to another user, so no client can push ours off.
    """
    addr = parse_broker_url(settings.url, settings.username, settings.password)
    tls_context: ssl.SSLContext | None = None
    if addr.tls:
        tls_context = ssl.create_default_context(
            cafile=str(settings.tls_ca) if settings.tls_ca else None
        )
        if settings.tls_cert:
            tls_context.load_cert_chain(
                str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
            )
        if settings.tls_insecure:
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
    return aiomqtt.Client(
        addr.host,
        addr.port,
        username=addr.username,
        password=addr.password,
        identifier=owned_client_id(addr.username, client_id or f"ars-{uuid.uuid4().hex[:10]}"),
        protocol=aiomqtt.ProtocolVersion.V311,
        will=will,
        clean_session=True,
        keepalive=settings.keepalive,
        timeout=10,
        tls_context=tls_context,
        max_inflight_messages=max_inflight,
        logger=logging.getLogger("aiomqtt"),
    )


OnConnect = Callable[["MqttLink"], Awaitable[None]]
#: Called after a reconnect that a deaf link forced, with how long it had been deaf (s).
OnDeaf = Callable[["MqttLink", float], Awaitable[None]]

#: A link whose own heartbeat has not come back for this many keepalive periods is deaf.
DEAF_AFTER_KEEPALIVES = 1.5

#: Longest wait for one PUBACK before the publish is retried (a retry may duplicate: handlers
#: are idempotent by id).
PUBLISH_ATTEMPT_S = 5.0


def deaf_message(silent_s: float) -> str:
    """The agents' warning event after a deaf link was reconnected."""
    return (
        f"MQTT link was connected but received nothing for {silent_s:.1f} s "
        "(own heartbeat lost): reconnected and resubscribed"
    )


class LinkDeaf(Exception):
    """Connected, but the broker no longer delivers to us (our heartbeat did not come back)."""


class MqttLink:
    """A reconnecting MQTT connection with subscriptions restored on every connect."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: aiomqtt.Will | None = None,
        on_connect: OnConnect | None = None,
        queue_size: int = 256,
        max_inflight: int = 32,
        heartbeat_topic: str | None = None,
        on_deaf: OnDeaf | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.will = will
        self.on_connect = on_connect
        self.max_inflight = max_inflight
        self.connected = asyncio.Event()
        self.connections = 0
        self._client: aiomqtt.Client | None = None
        self._down: asyncio.Event | None = None
        self._queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._last_error: Exception | None = None
        self.heartbeat_topic = heartbeat_topic
        self.on_deaf = on_deaf
        self.deaf_reconnects = 0
        self._token = uuid.uuid4().hex.encode()
        self._heard_at = 0.0
        self._queueing = False
        self._deaf_for: float | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"mqtt-link-{self.client_id}")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; raises TimeoutError (with the last error) after ``timeout``."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError as exc:
            raise TimeoutError(
                f"no MQTT connection to {redact(self.settings.url)}: {self._last_error}"
            ) from exc

    async def _run(self) -> None:
        delay = self.settings.reconnect_min_s
        while True:
            client = make_client(
                self.settings,
                client_id=self.client_id,
                will=self.will,
                max_inflight=self.max_inflight,
            )
            try:
                async with client:
                    self._down = asyncio.Event()
                    self._client = client
                    for topic, qos in self.subscriptions:
                        await client.subscribe(topic, qos)
                    if self.heartbeat_topic is not None:
                        await client.subscribe(self.heartbeat_topic, 0)
                    self.connections += 1
                    self.connected.set()
                    delay = self.settings.reconnect_min_s
                    logger.info(
                        "mqtt connected client=%s url=%s", self.client_id, redact(self.settings.url)
                    )
                    if self.on_connect is not None:
                        await self.on_connect(self)
                    await self._report_deaf()
                    await self._receive(client)
            except aiomqtt.MqttError as exc:
                self._last_error = exc
                logger.warning("mqtt link %s down: %s; retry in %.1fs", self.client_id, exc, delay)
            except LinkDeaf as exc:
                self._last_error = exc
                logger.warning("mqtt link %s deaf: %s; reconnecting", self.client_id, exc)
            finally:
                self.connected.clear()
                self._client = None
                if self._down is not None:
                    self._down.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Pump messages until the connection breaks (MqttError) or turns deaf (LinkDeaf)."""
        if self.heartbeat_topic is None:
            await self._pump(client)
            return
        pump = asyncio.create_task(self._pump(client), name=f"mqtt-pump-{self.client_id}")
        watch = asyncio.create_task(
            self._watch(client, self.heartbeat_topic), name=f"mqtt-heartbeat-{self.client_id}"
        )
        try:
            done, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        for task in done:
            task.result()  # re-raises MqttError or LinkDeaf

    async def _pump(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self.heartbeat_topic is not None and message.topic.value == self.heartbeat_topic:
                if message.payload == self._token:
                    self._heard_at = asyncio.get_running_loop().time()
                continue
            self._queueing = True
            try:
                await self._queue.put(message)
            finally:
                self._queueing = False

    async def _watch(self, client: aiomqtt.Client, topic: str) -> None:
        """Publish our token every quarter keepalive; raise LinkDeaf when it stops coming back."""
        loop = asyncio.get_running_loop()
        keepalive = float(self.settings.keepalive)
        limit = DEAF_AFTER_KEEPALIVES * keepalive
        self._heard_at = loop.time()
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topic, self._token, qos=0, timeout=keepalive)
            await asyncio.sleep(keepalive / 4)
            now = loop.time()
            if self._queueing or self._queue.full():
                # The agent is behind, not the broker: our echo waits unread behind its backlog.
                self._heard_at = now
            silent = now - self._heard_at
            if silent > limit:
                self._deaf_for = silent
                raise LinkDeaf(f"own heartbeat on {topic} not back for {silent:.1f} s")

    async def _report_deaf(self) -> None:
        silent, self._deaf_for = self._deaf_for, None
        if silent is None:
            return
        self.deaf_reconnects += 1
        logger.warning(
            "mqtt link %s reconnected and resubscribed after %.1f s deaf", self.client_id, silent
        )
        if self.on_deaf is not None:
            try:
                await self.on_deaf(self, silent)
            except Exception:  # the warning is best effort; the link must keep running
                logger.exception("mqtt link %s: on_deaf failed", self.client_id)

    async def messages(self) -> AsyncIterator[tuple[str, bytes]]:
        """Incoming messages across reconnects, as (topic, payload bytes)."""
        while True:
            message = await self._queue.get()
            yield message.topic.value, payload_bytes(message.payload)

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Add a subscription now (if connected) and on every later connect."""
        if (topic, qos) not in self.subscriptions:
            self.subscriptions.append((topic, qos))
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.subscribe(topic, qos)

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = 30.0,
    ) -> bool:
        """Publish; QoS0 drops (returns False) when disconnected, QoS>0 waits for the link.

        For QoS1 the call returns after the broker's PUBACK; a broken connection mid-way is
        retried on the next connection until ``timeout`` (so the caller's data is not lost).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            client, down = self._client, self._down
            if client is None or down is None or not self.connected.is_set():
                if qos == 0:
                    return False
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                await self.wait_connected(remaining)
                continue
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            attempt = None if remaining is None else min(remaining, PUBLISH_ATTEMPT_S)
            # aiomqtt never fails a publish whose connection died before the PUBACK: race the
            # publish against the link going down, and retry on the next connection.
            send = asyncio.ensure_future(
                client.publish(topic, payload, qos=qos, retain=retain, timeout=attempt)
            )
            lost = asyncio.ensure_future(down.wait())
            try:
                await asyncio.wait({send, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
            if send.done() and not send.cancelled() and send.exception() is None:
                return True
            error: BaseException | None = None
            if send.done() and not send.cancelled():
                error = send.exception()
            else:
                send.cancel()
                await asyncio.gather(send, return_exceptions=True)
                error = ConnectionError("connection lost before the broker acknowledged")
            if qos == 0:
                return False
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"publish to {topic} failed: {error}") from error
            if not isinstance(error, aiomqtt.MqttError | ConnectionError):
                raise error  # type: ignore[misc]
            await asyncio.sleep(0.05)
