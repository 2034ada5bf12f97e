"""The app's typed state (one ``web.AppKey``): settings, relay, region cache, open sockets."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from aiohttp import web

from common.config import Settings
from web.regions import RegionCache
from web.relay import Relay


@dataclass
class WebState:
    """Filled by the MQTT cleanup context at start-up; emptied at shutdown."""

    settings: Settings
    relay: Relay | None = None
    regions: RegionCache | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)

    def require_relay(self) -> Relay:
        if self.relay is None:
            raise web.HTTPServiceUnavailable(text="the MQTT relay is not running")
        return self.relay

    def require_regions(self) -> RegionCache:
        if self.regions is None:
            raise web.HTTPServiceUnavailable(text="the MQTT relay is not running")
        return self.regions


STATE = web.AppKey("ars_web_state", WebState)
