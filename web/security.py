"""Access control for the web UI: Host, token (cookie, URL, bearer or login form), Origin, headers.

Bound to loopback the UI is open (only local users reach it); bound elsewhere the config already
requires ``web.token``. When a token is set, every route but the login form needs it. The
comparison is constant-time. WebSockets and uploads also check the Origin header so another
site cannot drive the robot through the operator's browser.

The Host header is checked first, on every request and WebSocket: a page on
``rebind.example`` whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) is same-origin
with itself, so the Origin check alone cannot stop it; its requests carry
``Host: rebind.example`` and get 421 unless that name is in ``web.allowed_hosts``.
"""

from __future__ import annotations

import hmac
import html
import logging
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

logger = logging.getLogger(__name__)

COOKIE = "ars_token"
LOGIN_PATH = "/login"
PUBLIC_PATHS = frozenset({LOGIN_PATH, "/static/style.css", "/favicon.ico"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS


#: Bind addresses that name no host (every interface).
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def served_hosts(bind_host: str, allowed_hosts: Iterable[str]) -> frozenset[str]:
    """Host names the UI answers: loopback names, the bind address, ``web.allowed_hosts``."""
    names = set(LOOPBACK_HOSTS) | {h.strip().lower().rstrip(".") for h in allowed_hosts}
    if bind_host not in WILDCARD_BINDS:
        names.add(bind_host.lower())
    return frozenset(n for n in names if n)


def host_name(host_header: str) -> str:
    """The name in a Host header, without port, brackets or trailing dot, lower case."""
    value = host_header.strip().lower()
    if value.startswith("["):  # [::1]:8080
        return value[1 : value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


def host_middleware(bind_host: str, allowed_hosts: Iterable[str]) -> Middleware:
    """Answer 421 to a request whose Host is not one of ours (DNS rebinding), WebSocket too."""
    served = served_hosts(bind_host, allowed_hosts)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = host_name(request.host)
        if name not in served:
            logger.warning("web: refused %s %s for host %r", request.method, request.path, name)
            raise web.HTTPMisdirectedRequest(
                text=f"host {name!r} is not served here: open the UI by one of its names "
                f"({', '.join(sorted(served))}) or add it to web.allowed_hosts"
            )
        return await handler(request)

    return middleware


def token_ok(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; no token configured means open access."""
    if not expected:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value else None


def authenticated(request: web.Request, token: str | None) -> bool:
    if not token:
        return True
    return token_ok(request.cookies.get(COOKIE), token) or token_ok(_bearer(request), token)


def set_token_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="Strict", path="/", secure=request.secure
    )


def origin_allowed(request: web.Request, allowed: Iterable[str]) -> bool:
    """Same host as the request, or listed in ``web.allowed_origins``.

    A missing Origin is accepted: browsers always send it on WebSocket and POST requests, so
    its absence means a non-browser client, which the token (when set) still guards.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin.rstrip("/") in {o.rstrip("/") for o in allowed}:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return False
    return parts.netloc.lower() == request.host.lower()


def auth_middleware(token: str | None) -> Middleware:
    """Require ``token`` on every route but the login form (no-op without a token)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not token or request.path in PUBLIC_PATHS:
            return await handler(request)
        given = request.query.get("token")
        if given is not None:
            if not token_ok(given, token):
                raise web.HTTPForbidden(text="wrong token")
            if (
                request.method == "GET"
                and request.headers.get("Upgrade", "").lower() != "websocket"
            ):
                # Move the token from the URL into an HttpOnly cookie, out of history and logs.
                rest = {k: v for k, v in request.query.items() if k != "token"}
                response = web.HTTPFound(str(request.rel_url.with_query(rest)))
                set_token_cookie(response, request, token)
                raise response
            return await handler(request)
        if authenticated(request, token):
            return await handler(request)
        if request.method == "GET" and request.path == "/":
            raise web.HTTPFound(LOGIN_PATH)
        raise web.HTTPUnauthorized(text="token required: open /login or add ?token=")

    return middleware


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ARS FineTune: sign in</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body class="login"><form method="post" action="/login" class="login-form" data-testid="login-form">
<h1>ARS FineTune</h1><p>This UI is bound to a network address and needs its access token.</p>
<label>Token <input type="password" name="token" id="login-token" autocomplete="current-password"
autofocus required></label><button type="submit" id="login-submit">Sign in</button>
<p class="login-error" id="login-error">{error}</p></form></body></html>
"""


def login_page(error: str = "", status: int = 200) -> web.Response:
    return web.Response(
        text=_LOGIN_PAGE.format(error=html.escape(error)), content_type="text/html", status=status
    )


def make_login_handlers(
    token: str | None, allowed_origins: Iterable[str]
) -> tuple[Handler, Handler]:
    origins = list(allowed_origins)

    async def get_login(request: web.Request) -> web.StreamResponse:
        if authenticated(request, token):
            raise web.HTTPFound("/")
        return login_page()

    async def post_login(request: web.Request) -> web.StreamResponse:
        if not origin_allowed(request, origins):
            raise web.HTTPForbidden(text="origin not allowed")
        form = await request.post()
        given = form.get("token")
        if not token:
            raise web.HTTPFound("/")
        if not isinstance(given, str) or not token_ok(given, token):
            return login_page("Wrong token.", status=403)
        response = web.HTTPFound("/")
        set_token_cookie(response, request, token)
        raise response

    return get_login, post_login


def content_security_policy(request: web.Request) -> str:
    host = request.host
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' blob: data:",
            f"connect-src 'self' ws://{host} wss://{host}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every answer (pages, files, errors) gets the headers."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", content_security_policy(request))
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
