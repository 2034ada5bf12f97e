"""Image codecs with guards: size limits before decoding, decompression bombs refused."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from common.classes import IGNORE
from common.errors import ProtocolError

MAX_PIXELS = 4096 * 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PALETTE = 3


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(array: np.ndarray, *, compress_level: int = 1) -> bytes:
    """PNG of an RGB image or a single-channel mask (trainIds in an 8-bit greyscale PNG)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _open(data: bytes, what: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ProtocolError(f"{what}: {img.width}x{img.height} exceeds {max_pixels} pixels")
            img.load()
    except ProtocolError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ProtocolError(f"{what}: decompression bomb refused") from exc
    except Exception as exc:  # Pillow raises many types for bad data
        raise ProtocolError(f"{what}: not a valid image ({exc.__class__.__name__})") from exc
    return img


def decode_rgb(data: bytes, *, what: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a JPEG/PNG into HxWx3 uint8 RGB."""
    return np.asarray(_open(data, what, max_pixels).convert("RGB"))


def check_mask_png(data: bytes, *, what: str = "mask") -> None:
    """Refuse a mask that is not a PNG of 8-bit samples (palette: up to 8-bit indices).

    Checked on the PNG header itself, before Pillow decodes: Pillow reads a 16-bit RGB PNG as
    8-bit RGB, and ``convert`` clips 16-bit grey, so class 258 would silently become another
    class or ignore. Lossy formats (JPEG) would shift labels at every edge.
    """
    if len(data) < 26 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ProtocolError(f"{what}: not a PNG (a mask is a lossless PNG of 8-bit trainIds)")
    depth, colour = data[24], data[25]
    if depth != 8 and not (colour == PNG_PALETTE and depth < 8):
        raise ProtocolError(
            f"{what}: {depth}-bit PNG refused: class ids are 8-bit trainIds (255 = ignore)"
        )


def decode_mask(data: bytes, *, what: str = "mask", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a single-channel 8-bit PNG mask into HxW uint8 (values are trainIds or 255)."""
    check_mask_png(data, what=what)
    img = _open(data, what, max_pixels)
    if img.mode not in {"L", "P"}:
        raise ProtocolError(f"{what}: expected an 8-bit single-channel PNG, got mode {img.mode}")
    if img.mode == "P":
        img = Image.frombytes("L", img.size, img.tobytes())
    return np.asarray(img)


def check_mask(
    mask: np.ndarray, *, shape: tuple[int, int], num_classes: int, what: str = "mask"
) -> np.ndarray:
    """Refuse a mask whose size differs from ``shape`` or holding unknown class ids."""
    if mask.shape != shape:
        raise ProtocolError(
            f"{what}: size {mask.shape[::-1]} differs from the region {shape[::-1]}"
        )
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE)])
    if bad.size:
        raise ProtocolError(f"{what}: unknown class ids {bad.tolist()[:8]}")
    return mask
