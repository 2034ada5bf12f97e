"""CLI clients and the web UI find the local operator password the same way."""

from __future__ import annotations

import json
from pathlib import Path

from common.config import Settings
from common.credentials import client_mqtt, secrets_file


def test_client_mqtt_takes_the_local_password_only_when_the_url_names_no_user(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, mqtt={"url": "mqtt://127.0.0.1:1883"})
    assert client_mqtt(settings).url == "mqtt://127.0.0.1:1883"  # no secrets yet
    path = secrets_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"operator": "p@ss", "server": "s"}), encoding="utf-8")
    assert client_mqtt(settings).url == "mqtt://operator:p%40ss@127.0.0.1:1883"
    assert client_mqtt(settings, "server").url == "mqtt://server:s@127.0.0.1:1883"
    assert client_mqtt(settings, "robot-x").url == "mqtt://127.0.0.1:1883"  # unknown user
    named = Settings(data_dir=tmp_path, mqtt={"url": "mqtt://me:pw@127.0.0.1:1883"})
    assert client_mqtt(named).url == "mqtt://me:pw@127.0.0.1:1883"
