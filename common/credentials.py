"""The local credentials ``ars up`` generates: where they live and how a client uses them.

CLI clients (``ars send``, ``watch``, ``annotate``) and the web UI connect as the operator; when
the configured broker URL names no user, they take the operator's password from the data
folder instead of making the user retype it.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, urlsplit

from common.config import MqttSettings, Settings

OPERATOR = "operator"


def secrets_file(data_dir: Path) -> Path:
    """The 0600 JSON file of plain passwords for local agents, by user."""
    return data_dir / "secrets" / "mqtt.json"


def client_mqtt(settings: Settings, user: str = OPERATOR) -> MqttSettings:
    """The configured broker URL; when it has no user, the local ``ars up`` credentials are used."""
    mqtt = settings.mqtt
    if urlsplit(mqtt.url).username or mqtt.username:
        return mqtt
    path = secrets_file(settings.data_dir)
    if not path.is_file():
        return mqtt
    passwords = json.loads(path.read_text(encoding="utf-8"))
    if user not in passwords:
        return mqtt
    parts = urlsplit(mqtt.url)
    netloc = f"{quote(user)}:{quote(passwords[user])}@{parts.netloc}"
    return mqtt.model_copy(update={"url": f"{parts.scheme}://{netloc}"})
