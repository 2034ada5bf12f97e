"""What the robot makes of one processed frame: its candidate region and its preview.

Both are blocking (PNG/JPEG encoding): the agent calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from common.envelope import encode
from common.images import encode_jpeg, encode_png
from common.schemas import PreviewHeader, new_id, now
from robot_agent.candidates import Candidate
from robot_agent.inference import FrameResult


def region_parts(result: FrameResult) -> tuple[Candidate, bytes, bytes]:
    """The hardest box cut from the full-resolution frame, with its predicted classes."""
    x, y, w, h = result.mining.box
    crop = np.ascontiguousarray(result.image[y : y + h, x : x + w])
    mask = result.box_mask
    crop_png = encode_png(crop)
    mask_png = encode_png(mask)
    m = result.mining
    candidate = Candidate(
        region_id=new_id(),
        frame_id=result.frame_id,
        score=max(0.0, m.score),
        mean_entropy=min(1.0, max(0.0, m.mean_entropy)),
        region_entropy=min(1.0, max(0.0, m.region_entropy)),
        box=(x, y, w, h),
        frame_size=result.frame_size,
        model_version=result.model_version,
        ts=now(),
        crop_bytes=len(crop_png),
        mask_bytes=len(mask_png),
    )
    return candidate, crop_png, mask_png


def downsample_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a class mask (class ids are never blended)."""
    h, w = mask.shape
    if (w, h) == (width, height):
        return mask
    ys = np.minimum((np.arange(height) * h / height + h / (2 * height)).astype(np.intp), h - 1)
    xs = np.minimum((np.arange(width) * w / width + w / (2 * width)).astype(np.intp), w - 1)
    return np.ascontiguousarray(mask[ys[:, None], xs[None, :]])


def preview_payload(
    result: FrameResult, *, robot_id: str, width: int, height: int, quality: int, fps: float
) -> bytes:
    """Envelope [JPEG frame, PNG class mask] at the preview size, header per PreviewHeader."""
    image = result.image
    if image.shape[1] != width or image.shape[0] != height:
        image = np.asarray(
            Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
        )
    mask = downsample_mask(result.mask, width, height)
    header = PreviewHeader(
        robot_id=robot_id,
        frame_id=result.frame_id,
        model_version=result.model_version,
        infer_ms=max(0.0, result.infer_ms),
        width=width,
        height=height,
        fps=max(0.0, fps),
    )
    return encode(header.model_dump(mode="json"), [encode_jpeg(image, quality), encode_png(mask)])
