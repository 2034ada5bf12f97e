"""Config: defaults, TOML file, environment, flags; errors name the field and the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_settings
from common.errors import ConfigError


def test_defaults_need_no_file() -> None:
    s = load_settings()
    assert s.mqtt.url == "mqtt://127.0.0.1:1883"
    assert s.robot.select_ratio == 0.2 and s.robot.region_frac == 0.5
    assert s.web.host == "127.0.0.1" and s.web.token is None


def test_layers_in_order_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "ars.toml"
    cfg.write_text('[robot]\npreview_fps = 3\nid = "fromfile"\n[server]\niterations = 7\n')
    s = load_settings(
        cfg,
        environ={"ARS_ROBOT__PREVIEW_FPS": "9", "ARS_DATA_DIR": "/tmp/x"},
        overrides={"robot": {"id": "fromflag"}},
    )
    assert s.robot.preview_fps == 9.0
    assert s.robot.id == "fromflag"
    assert s.server.iterations == 7
    assert s.data_dir == Path("/tmp/x")


def test_error_names_field_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[robot]\nselect_ratio = 3.0\n")
    with pytest.raises(ConfigError, match=r"robot\.select_ratio.*file .*bad\.toml"):
        load_settings(cfg)


def test_error_names_environment() -> None:
    with pytest.raises(ConfigError, match=r"server\.iterations.*environment"):
        load_settings(environ={"ARS_SERVER__ITERATIONS": "many"})


def test_unknown_field_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.toml"
    cfg.write_text("[robot]\npreveiw_fps = 3\n")
    with pytest.raises(ConfigError, match=r"robot.preveiw_fps"):
        load_settings(cfg)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[robot\n")
    with pytest.raises(ConfigError, match=r"broken.toml"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match=r"not found"):
        load_settings(tmp_path / "nope.toml")


def test_web_token_required_off_loopback() -> None:
    with pytest.raises(
        ConfigError, match=r"'web' from command-line flags: .*web.token is required"
    ):
        load_settings(overrides={"web": {"host": "0.0.0.0"}})
    assert load_settings(overrides={"web": {"host": "0.0.0.0", "token": "s3cret"}}).web.token


def test_path_like_robot_id_and_bad_source_refused() -> None:
    with pytest.raises(ConfigError, match=r"robot.id"):
        load_settings(overrides={"robot": {"id": "../etc"}})
    with pytest.raises(ConfigError, match=r"robot.source"):
        load_settings(overrides={"robot": {"source": "webcam"}})
