"""The browser's WebSocket: one reader (this handler), one sender task draining a latest-wins queue.

Browser -> server (JSON text frames):
  {"type": "command", "id"?, "robot_id", "cmd", "args"?}   cmd in ALLOWED_COMMANDS
  {"type": "request", "id"?, "req", "args"?}              req in BROWSER_REQUESTS
  {"type": "select", "robot_id"}   only this robot's previews from now on (null: all)
  {"type": "ping", "id"?}
Server -> browser: JSON text frames {"type": "hello" | "robot_state" | "robot_event" |
"server_state" | "server_event" | "model_status" | "finetune_history" | "reply" | "error" |
"pong", ...} and binary frames holding preview envelopes exactly as the robot published them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from common.classes import CLASS_NAMES, IGNORE, PALETTE
from common.errors import ArsError, ProtocolError
from common.ids import check_id
from common.schemas import BUTTONS
from web.queue import LatestWinsQueue, QueueClosed
from web.regions import RegionCache, region_summary
from web.relay import Relay

logger = logging.getLogger(__name__)

ALLOWED_COMMANDS: frozenset[str] = frozenset((*BUTTONS, "rollback", "cancel_finetune"))
BROWSER_REQUESTS: frozenset[str] = frozenset(
    ("list_regions", "get_region", "list_models", "server_state")
)
MAX_IN_FLIGHT = 8
QUEUE_SIZE = 64


def _dumps(msg_type: str, /, **fields: Any) -> str:
    return json.dumps({"type": msg_type, **fields}, separators=(",", ":"), allow_nan=False)


class BrowserSession:
    """Turns one browser's messages into commands and requests; answers go to its queue."""

    def __init__(self, relay: Relay, regions: RegionCache, queue: LatestWinsQueue) -> None:
        self.relay = relay
        self.regions = regions
        self.queue = queue
        self.tasks: set[asyncio.Task[None]] = set()

    def error(self, msg_id: str | None, text: str) -> None:
        self.queue.put(_dumps("error", id=msg_id, error=text))

    def reply(self, msg_id: str | None, **fields: Any) -> None:
        self.queue.put(_dumps("reply", id=msg_id, **fields))

    def handle_text(self, data: str) -> None:
        """Validate one browser message; spawn its work or answer an error right away."""
        msg_id: str | None = None
        try:
            try:
                msg = json.loads(data)
            except (ValueError, RecursionError) as exc:  # deep nesting too
                raise ProtocolError(f"message is not JSON: {exc}") from exc
            if not isinstance(msg, dict):
                raise ProtocolError("message must be a JSON object")
            raw_id = msg.get("id")
            if raw_id is not None:
                if not isinstance(raw_id, str | int) or len(str(raw_id)) > 64:
                    raise ProtocolError("id must be a short string")
                msg_id = str(raw_id)
            args = msg.get("args", {})
            if not isinstance(args, dict):
                raise ProtocolError("args must be a JSON object")
            kind = msg.get("type")
            if kind == "command":
                rid = check_id(msg.get("robot_id"), "robot id")
                cmd = msg.get("cmd")
                if not isinstance(cmd, str) or cmd not in ALLOWED_COMMANDS:
                    raise ProtocolError(
                        f"command {cmd!r} is not allowed; use one of {sorted(ALLOWED_COMMANDS)}"
                    )
                self._spawn(self._command(msg_id, rid, cmd, args))
            elif kind == "request":
                req = msg.get("req")
                if not isinstance(req, str) or req not in BROWSER_REQUESTS:
                    raise ProtocolError(
                        f"request {req!r} is not allowed; use one of {sorted(BROWSER_REQUESTS)}"
                    )
                self._spawn(self._request(msg_id, req, args))
            elif kind == "select":
                wanted = msg.get("robot_id")
                only = None if wanted in (None, "") else check_id(wanted, "robot id")
                self.relay.select_preview(self.queue, only)
            elif kind == "ping":
                self.queue.put(_dumps("pong", id=msg_id))
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
        except ProtocolError as exc:
            self.error(msg_id, str(exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if len(self.tasks) >= MAX_IN_FLIGHT:
            coro.close()
            raise ProtocolError(f"too many requests in flight (limit {MAX_IN_FLIGHT})")
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("browser message handler failed", exc_info=task.exception())

    async def _command(self, msg_id: str | None, rid: str, cmd: str, args: dict[str, Any]) -> None:
        try:
            command_id = await self.relay.send_command(rid, cmd, args)
        except (ArsError, ValueError) as exc:
            self.reply(msg_id, kind="command", cmd=cmd, robot_id=rid, ok=False, error=str(exc))
            return
        self.reply(
            msg_id, kind="command", cmd=cmd, robot_id=rid, ok=True, data={"command_id": command_id}
        )

    async def _request(self, msg_id: str | None, req: str, args: dict[str, Any]) -> None:
        try:
            if req == "get_region":
                region_id = check_id(args.get("region_id"), "region id")
                answer = await self.regions.get(region_id)
                data = region_summary(region_id, answer) if answer.ok else {}
            else:
                answer = await self.relay.request(req, args)
                data = answer.data
        except ArsError as exc:
            self.reply(msg_id, kind="request", req=req, ok=False, error=str(exc))
            return
        self.reply(msg_id, kind="request", req=req, ok=answer.ok, error=answer.error, data=data)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def send_loop(ws: web.WebSocketResponse, queue: LatestWinsQueue) -> None:
    """Drain the browser's queue; a slow socket only delays (and thins) its own frames."""
    try:
        while True:
            item = await queue.get()
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)
    except (QueueClosed, ConnectionError):
        return


def hello_classes() -> dict[str, Any]:
    """The class list the page draws with (``common.classes``; palette.js keeps no copy)."""
    return {"names": list(CLASS_NAMES), "colours": PALETTE.tolist(), "ignore": IGNORE}


def hello(relay: Relay, max_bytes: int) -> str:
    return _dumps(
        "hello",
        client_id=relay.client_id,
        buttons=list(BUTTONS),
        commands=sorted(ALLOWED_COMMANDS),
        classes=hello_classes(),
        requests=sorted(BROWSER_REQUESTS),
        max_message_bytes=max_bytes,
        mqtt_connected=relay.link.connected.is_set(),
    )


async def serve_socket(
    request: web.Request,
    relay: Relay,
    regions: RegionCache,
    sockets: Any,
    max_bytes: int,
) -> web.WebSocketResponse:
    """Run one browser connection until it closes."""
    ws = web.WebSocketResponse(max_msg_size=max_bytes, heartbeat=20.0)
    await ws.prepare(request)
    sockets.add(ws)
    queue = LatestWinsQueue(QUEUE_SIZE)
    queue.put(hello(relay, max_bytes))
    relay.attach(queue)
    session = BrowserSession(relay, regions, queue)
    sender = asyncio.create_task(send_loop(ws, queue), name="ws-sender")
    logger.info("browser connected remote=%s clients=%d", request.remote, len(relay.clients))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.error(None, "binary messages are not accepted; send JSON text")
            elif msg.type == WSMsgType.ERROR:
                logger.info("browser socket error remote=%s: %s", request.remote, ws.exception())
                break
    finally:
        relay.detach(queue)
        await session.close()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        sockets.discard(ws)
        logger.info("browser gone remote=%s dropped=%d", request.remote, queue.dropped)
    return ws
