"""Connection settings for CLI clients: local credentials are found without retyping them."""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

from common.config import MqttSettings, Settings


def client_mqtt(settings: Settings, user: str = "operator") -> MqttSettings:
    """The configured broker URL; when it has no user, the local ``ars up`` credentials are used."""
    mqtt = settings.mqtt
    if urlsplit(mqtt.url).username or mqtt.username:
        return mqtt
    secrets_file = settings.data_dir / "secrets" / "mqtt.json"
    if not secrets_file.exists():
        return mqtt
    passwords = json.loads(secrets_file.read_text(encoding="utf-8"))
    if user not in passwords:
        return mqtt
    parts = urlsplit(mqtt.url)
    netloc = f"{quote(user)}:{quote(passwords[user])}@{parts.netloc}"
    return mqtt.model_copy(update={"url": f"{parts.scheme}://{netloc}"})
