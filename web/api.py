"""HTTP API of the annotation editor: region images and saving a mask."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from common.errors import ArsError, ProtocolError
from common.ids import check_id
from web.regions import PARTS, browser_mask_to_png
from web.security import origin_allowed
from web.state import STATE

logger = logging.getLogger(__name__)


def _region_id(request: web.Request) -> str:
    try:
        return check_id(request.match_info["region_id"], "region id")
    except ProtocolError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc


async def region_image(request: web.Request) -> web.Response:
    """GET /api/regions/{id}/{crop|pred|annotation}.png from the server (cached briefly)."""
    state = request.app[STATE]
    region_id = _region_id(request)
    kind = request.match_info["kind"]
    try:
        answer = await state.require_regions().get(region_id)
    except ArsError as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from exc
    if not answer.ok:
        raise web.HTTPNotFound(text=answer.error or f"region {region_id} not found")
    index = PARTS[kind]
    if index >= len(answer.parts) or not answer.parts[index]:
        raise web.HTTPNotFound(text=f"region {region_id} has no {kind} image")
    return web.Response(
        body=answer.parts[index],
        content_type="image/png",
        headers={"Cache-Control": "no-store"},
    )


async def post_annotation(request: web.Request) -> web.Response:
    """POST /api/regions/{id}/annotation: a PNG mask -> submit_annotation -> {ok, error}."""
    state = request.app[STATE]
    region_id = _region_id(request)
    if not origin_allowed(request, state.settings.web.allowed_origins):
        raise web.HTTPForbidden(text="origin not allowed")
    limit = state.settings.web.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        return web.json_response(
            {"ok": False, "error": f"mask is {request.content_length} bytes, limit {limit}"},
            status=413,
        )
    body = await request.read()  # the app's client_max_size caps this too
    if len(body) > limit:
        return web.json_response(
            {"ok": False, "error": f"mask is {len(body)} bytes, limit {limit}"}, status=413
        )
    try:
        png, width, height = await asyncio.to_thread(browser_mask_to_png, body)
    except ProtocolError as exc:
        return web.json_response({"ok": False, "error": str(exc)}, status=400)
    try:
        answer = await state.require_relay().request(
            "submit_annotation", {"region_id": region_id}, parts=[png]
        )
    except ArsError as exc:
        return web.json_response({"ok": False, "error": str(exc)}, status=503)
    state.require_regions().invalidate(region_id)
    logger.info(
        "annotation region=%s %dx%d ok=%s error=%s",
        region_id,
        width,
        height,
        answer.ok,
        answer.error,
    )
    return web.json_response(
        {"ok": answer.ok, "error": answer.error, "data": answer.data},
        status=200 if answer.ok else 422,
    )


async def post_skip(request: web.Request) -> web.Response:
    """POST /api/regions/{id}/skip: tell the server this region gets no label (not trained on)."""
    state = request.app[STATE]
    region_id = _region_id(request)
    if not origin_allowed(request, state.settings.web.allowed_origins):
        raise web.HTTPForbidden(text="origin not allowed")
    try:
        answer = await state.require_relay().request(
            "submit_annotation", {"region_id": region_id, "skip": True}, parts=[]
        )
    except ArsError as exc:
        return web.json_response({"ok": False, "error": str(exc)}, status=503)
    state.require_regions().invalidate(region_id)
    return web.json_response(
        {"ok": answer.ok, "error": answer.error, "data": answer.data},
        status=200 if answer.ok else 422,
    )
