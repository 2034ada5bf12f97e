"""``ars robot --id ROBOT --source SOURCE``: run one robot agent.

SOURCE: ``sim:urban|rural|drive``, ``folder:PATH``, ``mqtt:TOPIC``, ``video:PATH_OR_URL``
(file, stream or ``/dev/videoN``) or ``rosbag:PATH[:TOPIC]`` (ROS 1, ROS 2 or MCAP).

The broker URL must carry the robot's own user (``robot-<rid>``), e.g.
``--broker mqtt://robot-rover1:PASS@host:1883`` (``ars up`` passes it in ``ARS_MQTT__URL``).
SIGINT/SIGTERM stop it cleanly: it publishes its retained offline state and closes the link.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from common.config import Settings
from robot_agent.agent import RobotAgent


def size_arg(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H)."""
    w, sep, h = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 320x240, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", dest="robot_id", help="robot id (default rover1)")
    parser.add_argument(
        "--source",
        help="sim:urban|rural|drive, folder:PATH, mqtt:TOPIC (a robot user may read only its "
        "own subtree, e.g. mqtt:ars/robots/rover1/camera), video:PATH_OR_URL (file, rtsp/http "
        "stream, /dev/video0) or rosbag:PATH[:TOPIC] (ROS 1 .bag, ROS 2 bag, .mcap)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="video files and bags: times the recorded speed (default 1); 0: as fast as the "
        "robot takes frames, none dropped",
    )
    parser.add_argument(
        "--pace",
        choices=["recorded", "fps"],
        help="video files and bags: follow the recorded timestamps or --camera-fps",
    )
    parser.add_argument(
        "--loop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="video files and bags: start again at the end",
    )
    parser.add_argument("--model", type=Path, help="initial checkpoint (default: the shipped base)")
    parser.add_argument("--preview-fps", type=float, help="previews per second (0: none)")
    parser.add_argument("--infer-size", type=size_arg, help="inference size WxH, e.g. 320x240")
    parser.add_argument("--size", type=size_arg, help="simulated camera frame size WxH")
    parser.add_argument("--camera-fps", type=float, help="camera frames per second")
    parser.add_argument("--threads", type=int, help="torch threads for inference")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--runtime", choices=("auto", "onnx", "torch"), help="inference runtime")
    parser.add_argument("--seed", type=int, help="simulator seed")
    parser.add_argument("--switch-at", type=int, help="sim:drive frames before the rural stretch")
    parser.add_argument("--max-candidates", type=int, help="bound of the candidate store")


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Flags into ``settings.robot`` (flags win over the file and the environment)."""
    robot: dict[str, Any] = {}
    simple = {
        "robot_id": "id",
        "source": "source",
        "preview_fps": "preview_fps",
        "camera_fps": "camera_fps",
        "threads": "threads",
        "device": "device",
        "runtime": "runtime",
        "seed": "seed",
        "switch_at": "switch_at",
        "max_candidates": "max_candidates",
        "rate": "rate",
        "pace": "pace",
        "loop": "loop",
    }
    for attr, name in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            robot[name] = value
    if getattr(args, "model", None) is not None:
        robot["model"] = str(args.model)
    if getattr(args, "infer_size", None) is not None:
        robot["infer_width"], robot["infer_height"] = args.infer_size
    if getattr(args, "size", None) is not None:
        robot["width"], robot["height"] = args.size
    return {"robot": robot} if robot else {}


async def run(args: argparse.Namespace, settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with RobotAgent(settings) as robot:
            where = robot.link.settings.url.rsplit("@", 1)[-1]  # never print the password
            print(
                f"robot {robot.rid}: source {robot.source.description}, "
                f"model {robot.slot.current.version}, broker {where}",
                flush=True,
            )
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
