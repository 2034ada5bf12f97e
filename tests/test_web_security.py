"""Web security: token off loopback, Origin checks, headers, static files without traversal."""

from __future__ import annotations

import hmac
from typing import Any

import aiohttp
import pytest

from common.config import WebSettings
from common.errors import ConfigError
from tests.helpers.web import recv_type, start_client
from web import security

TOKEN = "s3cret-token-123"


def test_token_required_off_loopback() -> None:
    from common.config import load_settings

    with pytest.raises(ConfigError, match=r"web\.token is required"):
        load_settings(overrides={"web": {"host": "0.0.0.0"}})
    assert WebSettings(host="0.0.0.0", token=TOKEN).token == TOKEN
    assert security.is_loopback("127.0.0.1") and not security.is_loopback("0.0.0.0")


def test_token_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert security.token_ok(TOKEN, TOKEN)
    assert not security.token_ok(TOKEN[:-1] + "x", TOKEN)
    assert not security.token_ok(None, TOKEN)
    assert calls == [
        (TOKEN.encode(), TOKEN.encode()),
        ((TOKEN[:-1] + "x").encode(), TOKEN.encode()),
    ]


async def test_token_flow(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker, host="0.0.0.0", token=TOKEN)
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"
    assert (await client.get("/static/app.js")).status == 401
    assert (await client.get("/api/regions/reg-a/crop.png")).status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws")
    assert refused.value.status == 401
    assert (await client.get("/?token=wrong", allow_redirects=False)).status == 403

    login = await client.get("/login")
    assert login.status == 200 and 'name="token"' in await login.text()
    bad = await client.post("/login", data={"token": "nope"}, allow_redirects=False)
    assert bad.status == 403 and "Wrong token" in await bad.text()

    resp = await client.get(f"/?token={TOKEN}", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/"  # token leaves the URL
    cookie = resp.cookies[security.COOKIE]
    assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict"
    page = await client.get("/")  # the client keeps the cookie
    assert page.status == 200 and "btn-start_segmentation" in await page.text()
    ws = await client.ws_connect("/ws")
    await recv_type(ws, "hello")
    await ws.close()


async def test_login_form_sets_cookie(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker, host="0.0.0.0", token=TOKEN)
    resp = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 302 and resp.cookies[security.COOKIE].value == TOKEN
    assert (await client.get("/")).status == 200
    bearer = await client.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"}, cookies={})
    assert bearer.status == 200


async def test_websocket_origin_check(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker, allowed_origins=["https://ops.example.org"])
    host = f"{client.host}:{client.port}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws", headers={"Origin": f"http://{client.host}:1"})
    for origin in (f"http://{host}", "https://ops.example.org"):
        ws = await client.ws_connect("/ws", headers={"Origin": origin})
        await recv_type(ws, "hello")
        await ws.close()
    post = await client.post(
        "/api/regions/reg-a/annotation", data=b"x", headers={"Origin": "http://evil.example"}
    )
    assert post.status == 403


async def test_security_headers_and_static(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker)
    page = await client.get("/")
    assert page.status == 200
    for resp in (page, await client.get("/nowhere")):
        headers = resp.headers
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
    js = await client.get("/static/app.js")
    assert js.status == 200 and "javascript" in js.content_type
    for path in (
        "envelope.js",
        "editor.js",
        "charts.js",
        "palette.js",
        "regiongrow.js",
        "style.css",
    ):
        assert (await client.get(f"/static/{path}")).status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e%2f%2e%2e%2fcommon/config.py",
        "/static//etc/passwd",
        "/static/",
    ],
)
async def test_static_traversal_refused(aiohttp_client: Any, broker: Any, path: str) -> None:
    client = await start_client(aiohttp_client, broker)
    resp = await client.get(path, allow_redirects=False)
    body = await resp.text()
    assert resp.status in {400, 403, 404}
    assert "import" not in body and "root:" not in body


# --- DNS rebinding: only our own host names (issue 15) ------------------------------------


def test_host_names_parsed_and_served() -> None:
    assert security.host_name("Rebind.Example:8080") == "rebind.example"
    assert security.host_name("[::1]:8080") == "::1"
    assert security.host_name("localhost.") == "localhost"
    assert security.host_name("::1") == "::1"
    served = security.served_hosts("0.0.0.0", ["ARS.lab.example"])
    assert served == {"127.0.0.1", "localhost", "::1", "ars.lab.example"}
    assert "10.0.0.5" in security.served_hosts("10.0.0.5", [])


async def test_dns_rebinding_refused_on_http_and_websocket(
    aiohttp_client: Any, broker: Any
) -> None:
    from tests.helpers.web import fake_server

    async with fake_server(broker) as server:
        client = await start_client(aiohttp_client, broker, allowed_hosts=["ars.lab.example"])
        port = client.port
        evil = f"rebind.example:{port}"
        rebound = {"Host": evil, "Origin": f"http://{evil}"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", headers=rebound)
        assert refused.value.status == 421
        for method, path in [
            ("POST", "/api/regions/reg-a/skip"),
            ("POST", "/api/regions/reg-a/annotation"),
            ("GET", "/"),
            ("GET", "/api/regions/reg-a/crop.png"),
            ("GET", "/healthz"),
        ]:
            resp = await client.request(method, path, headers=rebound, data=b"")
            assert resp.status == 421, (method, path)
            assert "rebind.example" in await resp.text() and "web.allowed_hosts" in (
                await resp.text()
            )
        assert server.requests == []  # nothing reached the server
        # our own names still work: loopback ones and the configured one
        for name in (f"localhost:{port}", f"[::1]:{port}", f"ars.lab.example:{port}"):
            own = {"Host": name, "Origin": f"http://{name}"}
            assert (await client.post("/api/regions/reg-a/skip", headers=own)).status == 200
            ws = await client.ws_connect("/ws", headers=own)
            await recv_type(ws, "hello")
            await ws.close()
        assert [r[0] for r in server.requests] == ["submit_annotation"] * 3


# --- masks: 8-bit trainIds only (issue 15) ------------------------------------------------


async def test_sixteen_bit_and_lossy_masks_refused_with_reason(
    aiohttp_client: Any, broker: Any
) -> None:
    import numpy as np

    from common.images import encode_jpeg
    from tests.helpers.web import fake_server, png
    from tests.test_server_annotation import png16, png16_rgb

    async with fake_server(broker) as server:
        client = await start_client(aiohttp_client, broker)
        grey = np.zeros((40, 60), np.uint16)
        grey[:10] = 258
        cases = [
            (png16(grey), "16-bit PNG refused"),
            (png16_rgb(np.stack([grey] * 3, axis=-1)), "16-bit PNG refused"),
            (encode_jpeg(np.zeros((40, 60, 3), np.uint8)), "not a PNG"),
            (png(np.full((40, 60), 200, np.uint8)), "unknown class ids [200]"),
        ]
        for body, reason in cases:
            resp = await client.post("/api/regions/reg-a/annotation", data=body)
            answer = await resp.json()
            assert resp.status == 400 and answer["ok"] is False, answer
            assert reason in answer["error"], (reason, answer)
        assert server.requests == []  # refused in the web UI, nothing sent
        good = np.full((40, 60), 255, np.uint8)
        good[:10] = 3
        resp = await client.post("/api/regions/reg-a/annotation", data=png(good))
        assert resp.status == 200 and (await resp.json())["ok"] is True
