"""Typed configuration: defaults that run with no file, then a TOML file, then the environment,
then command-line flags. Validated by pydantic; every error names the field and its source.

Environment variables: ``ARS_<SECTION>__<FIELD>`` (e.g. ``ARS_ROBOT__PREVIEW_FPS=10``) and
``ARS_<FIELD>`` for top-level fields (e.g. ``ARS_DATA_DIR``). Nothing reads the environment at
import time: callers pass ``os.environ`` explicitly.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import ConfigError
from common.ids import id_value

ENV_PREFIX = "ARS_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MqttSettings(_Section):
    """How an agent reaches the broker: any MQTT 3.1.1 broker by URL."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://user:pass@host:port or mqtts://")
    username: str | None = Field(None, description="overrides the user in the URL")
    password: str | None = Field(None, description="overrides the password in the URL")
    keepalive: int = Field(30, ge=1, le=3600)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False
    max_payload_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    reconnect_min_s: float = Field(0.2, gt=0, le=60)
    reconnect_max_s: float = Field(5.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if not url.startswith(("mqtt://", "mqtts://", "tcp://", "ssl://")):
            raise ValueError("must start with mqtt://, mqtts://, tcp:// or ssl://")
        return url


class BrokerSettings(_Section):
    """The embedded amqtt broker (``ars broker``, ``ars up``)."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=0, le=65535)
    allow_anonymous: bool = False
    password_file: Path | None = Field(None, description="default: <data_dir>/broker/passwd")
    max_payload_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_connections: int = Field(256, ge=1, le=100_000)


class RobotSettings(_Section):
    """The robot agent."""

    id: str = "rover1"
    source: str = Field(
        "sim:drive",
        description="sim:urban|rural|drive|route, folder:PATH, mqtt:TOPIC, video:PATH_OR_URL, "
        "rosbag:PATH[:TOPIC]",
    )
    camera_fps: float = Field(30.0, gt=0, le=240)
    pace: Literal["recorded", "fps"] = Field(
        "recorded",
        description="video files and bags: follow the recording's timestamps (scaled by rate) "
        "or tick at camera_fps",
    )
    rate: float = Field(
        1.0,
        ge=0,
        le=100,
        description="video files and bags: times the recorded speed; 0: as fast as the robot "
        "takes frames (none dropped)",
    )
    loop: bool = Field(False, description="video files and bags start again at their end")
    width: int = Field(640, ge=32, le=4096)
    height: int = Field(480, ge=32, le=4096)
    infer_width: int = Field(320, ge=32, le=4096)
    infer_height: int = Field(240, ge=32, le=4096)
    threads: int = Field(
        0, ge=0, le=256, description="torch threads for inference; 0: all cores but one"
    )
    device: str = Field("auto", description="auto, cpu or cuda")
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto",  # onnxruntime: 2-3x faster than torch on CPU (ars bench robot)
        description="what runs the model: onnx (onnxruntime, checked against torch at load), "
        "torch, or auto (onnx on a CPU device when onnxruntime is installed and agrees, "
        "else torch)",
    )
    onnx_cache: Path | None = Field(
        None, description="folder of exported ONNX graphs; default: ~/.cache/ars/onnx"
    )
    preview_fps: float = Field(5.0, ge=0, le=60)
    preview_quality: int = Field(80, ge=10, le=100)
    select_ratio: float = Field(
        0.2, gt=0, le=1, description="share of each round's frames whose window is labelled"
    )
    selection: Literal["top", "diverse", "stratified"] = Field(
        # adaptation bench, quick: next mIoU +0.007 over random frames on the mean of route
        # seeds 1-26 (ahead on 18), +0.011 over "diverse" on seeds 1-4; typical (TypiClust)
        # frames +0.0045 on seeds 1-8, this rule +0.010 (docs/adaptation.md)
        "stratified",
        description="top: the paper's top frames; diverse: the hardest, spread along the "
        "route; stratified: the hardest of each equal stretch of the route",
    )
    window: Literal["hardest", "spread"] = Field(
        # hardest windows end round 3 lower on 6 of 8 route seeds, mean -0.019 next mIoU
        # (docs/adaptation.md, What was tried)
        "spread",
        description="hardest: each frame's hardest window (the paper's); spread: the hardest "
        "of the 3x3 grid windows used least so far, so windows cover the whole image",
    )
    region_frac: float = Field(
        # the same 5 % as a ninth of 45 % of the frames or as 5 % whole frames: lower next mIoU
        # on the mean of route seeds 1-4 and 1-8 (docs/adaptation.md, What was tried)
        0.5,
        gt=0,
        le=1,
        description="window side as a share of the frame's side (0.5: a quarter of the frame, "
        "the paper's)",
    )
    store_every: int = Field(
        2,  # at the 30-fps camera: 15 candidates a second, as the 15-fps camera stored before
        ge=1,
        le=1000,
        description="store one candidate per N frames, the hardest of them (storing costs "
        "10-25 ms a frame; consecutive frames at 30 fps are near duplicates)",
    )
    max_candidates: int = Field(5000, ge=10, le=1_000_000)
    model: Path | None = Field(None, description="initial checkpoint; default: the shipped base")
    switch_at: int = Field(300, ge=0, description="sim:drive frames before the rural stretch")
    seed: int = 0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return id_value(value, "robot id")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        kind, _, rest = value.partition(":")
        if kind == "sim" and rest in {"urban", "rural", "drive", "route"}:
            return value
        if kind in {"folder", "mqtt", "video", "rosbag"} and rest:
            return value
        raise ValueError(
            "must be sim:urban, sim:rural, sim:drive, sim:route, folder:PATH, mqtt:TOPIC, "
            "video:PATH_OR_URL or rosbag:PATH[:TOPIC]"
        )


class ServerSettings(_Section):
    """The server agent: stores, fine-tuning and model publishing."""

    iterations: int = Field(
        250, ge=1, le=1_000_000, description="fine-tuning iterations for a few labeled regions"
    )
    iterations_per_frame: float = Field(
        3.0, ge=0, le=10_000, description="iterations per whole frame of labeled pixels"
    )
    iterations_cap: int = Field(300, ge=1, le=1_000_000, description="most iterations a job runs")
    adapt_bn_frames: int = Field(
        0, ge=0, le=100_000, description="new-domain frames BN statistics are re-estimated on"
    )
    pseudo_threshold: float = Field(
        0.0, ge=0, lt=1, description="softmax confidence of a pseudo-label (0: none)"
    )
    shared_loss: bool = Field(
        True,
        description="new-domain and replay samples each take their share of the loss, "
        "whatever their labelled pixels (else: summed over pixels)",
    )
    distill_weight: float = Field(
        1.0, ge=0, le=100,
        description="weight of the replay frames' distillation to the base model's answers "
        "(0: replay frames train on their labels alone)",
    )  # fmt: skip
    colour_cast: float = Field(
        0.0, ge=0, le=3,  # models.transforms.MAX_CAST (common does not import models)
        description="strength of the random colour cast the labelled new-domain samples get "
        "each time they are drawn (0: none; 1: each channel x 0.7-1.3, docs/adaptation.md)",
    )  # fmt: skip
    lr: float = Field(5e-3, gt=0, le=1)  # tuned once on the former label-efficiency bench, seed 11
    batch_size: int = Field(4, ge=1, le=512)
    replay_share: float = Field(0.5, ge=0, lt=1)
    frozen_blocks: int = Field(
        5, ge=0, le=1000,
        description="backbone blocks fine-tuning leaves fixed (stability; 5: MobileNetV3-Large's "
        "stem, stride-4 stage and first stride-8 block)",
    )  # fmt: skip
    train_width: int = Field(320, ge=32, le=4096)
    train_height: int = Field(240, ge=32, le=4096)
    replay_frames: int = Field(64, ge=0, le=100_000)
    eval_frames: int = Field(24, ge=1, le=100_000)
    chunk_size: int = Field(256 * 1024, ge=1024, le=256 * 1024)
    model_dtype: Literal["fp32", "fp16"] = "fp16"
    delta_updates: bool = Field(
        True, description="send a model as its difference from the robot's when smaller"
    )
    resend_timeout_s: float = Field(2.0, gt=0, le=600)
    device: str = "auto"
    threads: int = Field(2, ge=1, le=256)
    gate: bool = Field(True, description="refuse a candidate worse than the robot's model")
    gate_urban_drop: float = Field(
        0.02, ge=0, le=1,
        description="old-domain mIoU a candidate may lose against the base model and still pass",
    )  # fmt: skip
    gate_heldout_drop: float = Field(
        0.0, ge=0, le=1,
        description="new-domain mIoU (held-out regions; rural frames without them) a candidate "
        "may lose against the robot's model and still pass: a few held-out regions score noisily",
    )  # fmt: skip
    urban_budget: float = Field(
        0.01, ge=0, le=1,
        description="old-domain mIoU a fine-tune may lose against the base model on the guard "
        "frames before it is blended back toward the robot's model (1: no guard)",
    )  # fmt: skip
    holdout_every: int = Field(
        5, ge=0, le=1000, description="hold 1 labeled region in N out of training (0: none)"
    )

    @model_validator(mode="after")
    def _iterations_cap(self) -> ServerSettings:
        if self.iterations_cap < self.iterations:
            raise ValueError(
                f"server.iterations_cap ({self.iterations_cap}) is below server.iterations "
                f"({self.iterations}), the floor of the training rule"
            )
        return self

    max_regions: int = Field(100_000, ge=1)
    base_model: Path | None = Field(None, description="base checkpoint; default: the shipped one")

    def recipe(self) -> dict[str, Any]:
        """The fine-tune recipe as ``models.training.finetune`` keywords: the one place the
        server's job and the benches that train as the server does read it from."""
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "replay_share": self.replay_share,
            "frozen_blocks": self.frozen_blocks,
            "shared_loss": self.shared_loss,
            "distill_weight": self.distill_weight,  # with the base model as `teacher`
            "colour_cast": self.colour_cast,
        }


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = Field(None, description="required when host is not loopback")
    max_upload_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names the UI answers besides loopback ones and web.host (DNS rebinding)",
    )

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebSettings:
        loopback = self.host in {"127.0.0.1", "localhost", "::1"}
        if not loopback and not self.token:
            raise ValueError(f"web.token is required when web.host is {self.host!r} (not loopback)")
        return self


class Settings(_Section):
    """Root of the configuration."""

    prefix: str = Field("ars", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    data_dir: Path = Path(".ars")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    model_key: str | None = Field(None, description="shared HMAC key signing model manifests")
    mqtt: MqttSettings = MqttSettings()
    broker: BrokerSettings = BrokerSettings()
    robot: RobotSettings = RobotSettings()
    server: ServerSettings = ServerSettings()
    web: WebSettings = WebSettings()


_SECTIONS = {name for name, f in Settings.model_fields.items() if isinstance(f.default, BaseModel)}


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _flatten(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``ARS_*`` variables (strings; pydantic converts them)."""
    layer: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1 and path[0] in Settings.model_fields and path[0] not in _SECTIONS:
            layer[path[0]] = value
        elif len(path) == 2 and path[0] in _SECTIONS:
            layer.setdefault(path[0], {})[path[1]] = value
    return layer


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the TOML file, then ``environ``, then ``overrides`` (flags, nested dicts)."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        file = Path(path)
        try:
            layers.append((f"file {file}", tomllib.loads(file.read_text(encoding="utf-8"))))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {file} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
    if environ is not None:
        layers.append(("environment (ARS_*)", env_layer(environ)))
    if overrides:
        layers.append(("command-line flags", {k: v for k, v in overrides.items()}))

    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for layer_name, layer in layers:
        merged = _deep_merge(merged, layer)
        for key in _flatten(layer):
            origin[key] = layer_name
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        source: str | None = next(
            (origin[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origin), None
        )
        if source is None:  # a cross-field rule on a section: blame the last layer that set it
            below = [origin[k] for k in origin if k[: len(loc)] == loc]
            source = below[-1] if below else "defaults"
        field = ".".join(loc) or "(root)"
        raise ConfigError(f"config field '{field}' from {source}: {first['msg']}") from exc
