"""The web UI (``ars web``): one page, a WebSocket relay between browsers and MQTT, and the
annotation editor's HTTP API. Depends only on ``common``."""
