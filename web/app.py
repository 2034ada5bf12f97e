"""The aiohttp application: one page, its static files, the WebSocket relay and the editor API.

``create_app(settings)`` builds it; a ``cleanup_ctx`` owns the MQTT link and the relay's reader
task (cleanup runs only if start-up succeeded), and ``on_shutdown`` closes every browser socket
with GOING_AWAY so browsers reconnect to the next web process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import WSCloseCode, web

from common.config import Settings
from common.mqtt import MqttLink, deaf_message
from common.topics import Topics
from web.api import post_annotation, post_skip, region_image
from web.regions import RegionCache
from web.relay import Relay, subscriptions, web_client_id
from web.security import (
    add_security_headers,
    auth_middleware,
    host_middleware,
    make_login_handlers,
    origin_allowed,
)
from web.state import STATE, WebState
from web.ws import serve_socket

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    if not origin_allowed(request, state.settings.web.allowed_origins):
        logger.warning("websocket refused: origin %s not allowed", request.headers.get("Origin"))
        raise web.HTTPForbidden(text="origin not allowed")
    return await serve_socket(
        request,
        state.require_relay(),
        state.require_regions(),
        state.sockets,
        state.settings.web.max_upload_bytes,
    )


async def health(request: web.Request) -> web.Response:
    relay = request.app[STATE].relay
    connected = relay is not None and relay.link.connected.is_set()
    return web.json_response(
        {"ok": True, "mqtt_connected": connected, "clients": len(relay.clients) if relay else 0}
    )


async def _mqtt_context(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    client_id = web_client_id()

    async def on_deaf(link: MqttLink, silent_s: float) -> None:
        if state.relay is not None:
            state.relay.local_event(deaf_message(silent_s), level="warning")

    link = MqttLink(
        state.settings.mqtt,
        client_id=client_id,
        subscriptions=subscriptions(Topics(state.settings.prefix), client_id),
        queue_size=512,
        heartbeat_topic=Topics(state.settings.prefix).heartbeat(client_id),
        on_deaf=on_deaf,
    )
    async with link:
        relay = Relay(state.settings, link, client_id)
        state.relay = relay
        state.regions = RegionCache(relay)
        reader = asyncio.create_task(relay.run(), name="web-relay-reader")
        try:
            yield
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            relay.close()
            state.relay = None
            state.regions = None


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[STATE].sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def create_app(settings: Settings) -> web.Application:
    """The web UI for ``settings`` (MQTT user from ``settings.mqtt.url``)."""
    web_cfg = settings.web
    app = web.Application(
        middlewares=[
            host_middleware(web_cfg.host, web_cfg.allowed_hosts),
            auth_middleware(web_cfg.token),
        ],
        client_max_size=web_cfg.max_upload_bytes + 64 * 1024,
    )
    app[STATE] = WebState(settings)
    get_login, post_login = make_login_handlers(web_cfg.token, web_cfg.allowed_origins)
    app.router.add_get("/", index)
    app.router.add_get("/login", get_login)
    app.router.add_post("/login", post_login)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", health)
    app.router.add_get(r"/api/regions/{region_id}/{kind:crop|pred|annotation}.png", region_image)
    app.router.add_post("/api/regions/{region_id}/annotation", post_annotation)
    app.router.add_post("/api/regions/{region_id}/skip", post_skip)
    app.router.add_static("/static", STATIC_DIR, follow_symlinks=False, show_index=False)
    app.on_response_prepare.append(add_security_headers)
    app.cleanup_ctx.append(_mqtt_context)
    app.on_shutdown.append(_close_sockets)
    return app
