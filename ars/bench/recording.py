"""What a light robot replays, produced once by a real robot's own code.

``record`` runs a few frames of the simulator's rural drive through the robot's inference worker
(``robot_agent.inference``, with the bench checkpoint) and its frame handling
(``robot_agent.frames``): each frame gives a preview envelope exactly as ``preview_payload``
encodes it and a candidate region (crop PNG, predicted-mask PNG, scores, box) exactly as
``region_parts`` cuts it. The folder it writes (``index.json`` and the binary parts) is what
every light robot loads, so they send real previews and regions without running a model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.envelope import decode
from robot_agent.candidates import Candidate

INDEX = "index.json"


@dataclass(frozen=True)
class RecordedPreview:
    """A preview's header fields (model version, inference time, size) and its two parts."""

    header: dict[str, Any]
    jpeg: bytes
    png: bytes


@dataclass(frozen=True)
class Recording:
    previews: list[RecordedPreview]
    regions: list[tuple[Candidate, bytes, bytes]]
    model: dict[str, str]  # the checkpoint's ModelRef fields (version, sha256, arch)

    @property
    def preview_bytes(self) -> int:
        """Mean size of one preview's parts."""
        return sum(len(p.jpeg) + len(p.png) for p in self.previews) // len(self.previews)

    @property
    def region_bytes(self) -> int:
        """Mean size of one region's parts (crop and mask PNG)."""
        return sum(len(c) + len(m) for _, c, m in self.regions) // len(self.regions)


def record(
    folder: Path,
    checkpoint: Path,
    *,
    frames: int = 6,
    size: tuple[int, int] = (640, 480),
    infer_size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> Recording:
    """Run ``frames`` simulator frames through the robot's code and save what it would send."""
    from common.config import RobotSettings
    from robot_agent.frames import preview_payload, region_parts
    from robot_agent.inference import InferenceWorker, ModelSlot
    from robot_agent.model_store import load_verified
    from simulator.drive import Drive

    rs = RobotSettings()
    loaded = load_verified(checkpoint, "cpu")
    worker = InferenceWorker(
        ModelSlot(loaded), infer_size=infer_size, region_frac=rs.region_frac, window=rs.window
    )
    drive = Drive("rural", seed=seed, width=size[0], height=size[1], switch_at=rs.switch_at)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"model": loaded.ref().model_dump(exclude={"v"}), "frames": []}
    for i in range(frames):
        frame = drive.frame(i * 15)  # half a second apart at 30 fps: different views
        result = worker.process(frame.frame_id, frame.image)
        candidate, crop, mask = region_parts(result)
        preview = decode(
            preview_payload(
                result, robot_id="recorder", width=infer_size[0], height=infer_size[1],
                quality=rs.preview_quality, fps=rs.camera_fps,
            )
        )  # fmt: skip
        parts = {"jpeg": preview.parts[0], "png": preview.parts[1], "crop": crop, "mask": mask}
        for name, data in parts.items():
            (folder / f"{i}.{name}").write_bytes(data)
        header = {k: preview.header[k] for k in ("model_version", "infer_ms", "width", "height")}
        index["frames"].append({"preview": header, "candidate": dataclasses.asdict(candidate)})
    (folder / INDEX).write_text(json.dumps(index), encoding="utf-8")
    return load(folder)


def load(folder: Path) -> Recording:
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    previews: list[RecordedPreview] = []
    regions: list[tuple[Candidate, bytes, bytes]] = []
    for i, item in enumerate(index["frames"]):
        part = {n: (folder / f"{i}.{n}").read_bytes() for n in ("jpeg", "png", "crop", "mask")}
        previews.append(RecordedPreview(item["preview"], part["jpeg"], part["png"]))
        c = dict(item["candidate"])
        c["box"], c["frame_size"] = tuple(c["box"]), tuple(c["frame_size"])
        regions.append((Candidate(**c), part["crop"], part["mask"]))
    return Recording(previews, regions, {k: str(v) for k, v in index["model"].items()})
