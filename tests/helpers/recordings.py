"""Small recordings written by the tests themselves (nothing is downloaded): videos through
PyAV and ROS 1, ROS 2 and MCAP bags through rosbags, each frame a known picture."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from common.images import encode_png

T0_NS = 1_700_000_000_000_000_000  # the bags' first timestamp
STEP_NS = 50_000_000  # 20 frames per second


def picture(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame ``i``: four flat quadrants whose colours depend on ``i`` (easy on video codecs)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    h2, w2 = height // 2, width // 2
    colours = [
        (40 * i % 256, 200, 30),
        (220, 30 * i % 256, 90),
        (10, 120, 25 * i % 256),
        (250 - 20 * i % 256, 250, 250),
    ]
    top, bottom, left, right = slice(0, h2), slice(h2, None), slice(0, w2), slice(w2, None)
    quadrants = [(top, left), (top, right), (bottom, left), (bottom, right)]
    for (ys, xs), colour in zip(quadrants, colours, strict=True):
        img[ys, xs] = colour
    return img


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    codec: str = "libx264",
    fps: int = 25,
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
) -> None:
    """Encode ``frames`` (HxWx3 RGB) into ``path`` with PyAV."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=fmt) as container:
        stream: Any = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = Fraction(1, fps)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _header(types: Any, ros1: bool, stamp: int) -> Any:
    Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    time = Time(sec=stamp // 10**9, nanosec=stamp % 10**9)
    if ros1:
        return Header(seq=0, stamp=time, frame_id="camera")
    return Header(stamp=time, frame_id="camera")


def image_message(types: Any, ros1: bool, stamp: int, image: np.ndarray, encoding: str) -> Any:
    """A ``sensor_msgs/Image`` of ``image`` (RGB) in ``encoding`` (rgb8, bgr8, mono8 or any
    other name, whose data is then the RGB bytes as they are)."""
    h, w = image.shape[:2]
    if encoding == "bgr8":
        data = image[..., ::-1]
    elif encoding == "mono8":
        data = image[..., 1]
    else:
        data = image
    data = np.ascontiguousarray(data).reshape(-1)
    return types["sensor_msgs/msg/Image"](
        header=_header(types, ros1, stamp),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=data.size // h,
        data=data,
    )


def compressed_message(types: Any, ros1: bool, stamp: int, image: np.ndarray) -> Any:
    return types["sensor_msgs/msg/CompressedImage"](
        header=_header(types, ros1, stamp),
        format="png",
        data=np.frombuffer(encode_png(image), dtype=np.uint8),
    )


Topics = dict[str, tuple[str, list[Any]]]  # topic -> (msgtype, messages), one per STEP_NS


def write_ros1_bag(path: Path, topics: Topics) -> None:
    store = get_typestore(Stores.ROS1_NOETIC)
    with Writer1(path) as writer:
        for topic, (msgtype, messages) in topics.items():
            conn = writer.add_connection(topic, msgtype, typestore=store)
            for i, msg in enumerate(messages):
                writer.write(conn, T0_NS + i * STEP_NS, store.serialize_ros1(msg, msgtype))


def write_ros2_bag(path: Path, topics: Topics, *, mcap: bool = False) -> None:
    store = get_typestore(Stores.ROS2_HUMBLE)
    plugin = StoragePlugin.MCAP if mcap else StoragePlugin.SQLITE3
    with Writer2(path, version=9, storage_plugin=plugin) as writer:
        for topic, (msgtype, messages) in topics.items():
            conn = writer.add_connection(topic, msgtype, typestore=store)
            for i, msg in enumerate(messages):
                writer.write(conn, T0_NS + i * STEP_NS, store.serialize_cdr(msg, msgtype))


def ros1_types() -> Any:
    return get_typestore(Stores.ROS1_NOETIC).types


def ros2_types() -> Any:
    return get_typestore(Stores.ROS2_HUMBLE).types
