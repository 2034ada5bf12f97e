"""``ars bench transfer``: one model version from server to robot, offer to active.

The version is what a fine-tune makes: the robot's model (the shipped base) fine-tuned with
the server's recipe (``finetune``, ``server.frozen_blocks`` fixed, BatchNorm statistics fixed,
``--finetune-iterations`` on simulator rural frames and their labels, ``--seed``). It goes out
twice: saved fp32 and sent whole (``fp32_full``, what every update moved before deltas) and
saved fp16 and sent as a delta from the robot's model (``fp16_delta``, the default);
``bytes_over_full_fp32`` is the delta's bytes over the whole fp32 checkpoint's.

The broker (``ars broker``, or Mosquitto) and the server (``ars server``) run as their own
processes; the robot agent runs in this process so the gap between two processed frames around
the swap can be read. An observer (operator user) timestamps the offer and the robot's ``active``
status and counts every byte of the chunks on the wire (resends included). Each version is
sent twice: to an idle robot (the transfer alone, compared with the raw baseline) and to a
segmenting robot (the realistic case, where the swap pause is measured).

Baseline in the same run: the same number of bytes pushed by a bare paho client in 256 KiB
QoS1 chunks (16 in flight) to a bare subscriber through the same broker, and through Mosquitto
when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

from ars.bench._harness import (
    Broker,
    Observer,
    bench_checkpoint,
    broker,
    json_obj,
    load_average,
    median,
    mosquitto_binary,
    r,
    spawn,
    stop,
    untrained_checkpoint,
)
from common.config import MqttSettings, Settings, load_settings

RID = "rover1"
RAW_RID = "rover2"  # the raw baseline's topic: no robot listens there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="raw baseline repeats")
    parser.add_argument("--arch", default="lraspp_mbv3_large", help="model architecture")
    parser.add_argument(
        "--brokers", default="amqtt,mosquitto", help="brokers to run ours on (when installed)"
    )
    parser.add_argument("--tiny", action="store_true", help="smoke setting: tiny model, amqtt")
    parser.add_argument(
        "--finetune-iterations", type=int, default=100, help="fine-tune making the new version"
    )
    parser.add_argument("--seed", type=int, default=0, help="fine-tune seed")


#: (row, checkpoint dtype): the whole fp32 checkpoint, then the fp16 delta (the default).
ROWS = (("fp32_full", "fp32"), ("fp16_delta", "fp16"))


def finetuned(base: Path, iterations: int, seed: int, tiny: bool) -> Any:
    """The base fine-tuned as the server does it, at a small crop so the bench stays short
    (the delta's size follows the steps taken, not the crop)."""
    from models.checkpoint import load_checkpoint
    from models.training import finetune
    from simulator.sets import render_samples, source_replay_set

    server = Settings().server
    model, _ = load_checkpoint(base)
    size = (48, 64) if tiny else (96, 128)
    new = render_samples("rural", range(7000 + seed * 100, 7000 + seed * 100 + 12), size=size)
    replay = source_replay_set(8, seed=seed, size=size)
    teacher, _ = load_checkpoint(base)  # as the server: the base is the teacher
    finetune(
        model, new, replay, iterations=iterations, **server.recipe(), teacher=teacher,
        seed=seed, size=size,
    )  # fmt: skip
    return model


# --- raw baseline ---------------------------------------------------------------------------
def raw_push(url_pub: str, url_sub: str, port: int, topic: str, total: int, chunk: int) -> float:
    """Seconds from the first publish to the last chunk received (paho, QoS1, 16 in flight)."""
    import paho.mqtt.client as paho

    from common.clientid import owned_client_id
    from common.mqtt import parse_broker_url

    payload = os.urandom(chunk)
    n = -(-total // chunk)
    got = threading.Event()
    subscribed = threading.Event()
    count = [0]

    def client(url: str, cid: str) -> paho.Client:
        addr = parse_broker_url(url)
        api = paho.CallbackAPIVersion.VERSION2  # type: ignore[attr-defined]
        cid = owned_client_id(addr.username, cid)  # brokers refuse ids of other users
        c = paho.Client(api, client_id=cid, protocol=paho.MQTTv311)
        c.username_pw_set(addr.username, addr.password)
        c.max_inflight_messages_set(16)
        c.max_queued_messages_set(0)
        return c

    sub = client(url_sub, f"raw-sub-{os.getpid()}")

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        count[0] += 1
        if count[0] >= n:
            got.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    pub = client(url_pub, f"raw-pub-{os.getpid()}")
    connected = threading.Event()
    pub.on_connect = lambda *a: connected.set()
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        if not (subscribed.wait(10) and connected.wait(10)):
            raise RuntimeError("raw baseline clients did not connect")
        start = time.perf_counter()
        sizes = [chunk] * (n - 1) + [total - chunk * (n - 1)]
        for size in sizes:
            pub.publish(topic, payload[:size], qos=1)
        if not got.wait(120):
            raise RuntimeError(f"raw baseline: {count[0]}/{n} chunks arrived")
        return time.perf_counter() - start
    finally:
        pub.loop_stop()
        sub.loop_stop()
        pub.disconnect()
        sub.disconnect()


async def raw_seconds(b: Broker, total: int, chunk: int, repeats: int) -> float:
    times = [
        await asyncio.to_thread(
            raw_push,
            b.url("server"),
            b.url(f"robot-{RAW_RID}"),
            b.port,
            b.topics.model_chunk(RAW_RID),
            total,
            chunk,
        )
        for _ in range(repeats)
    ]
    return median(times)


def register(server_dir: Path, path: Path, version: str, arch: str, dtype: str) -> None:
    from common.hashing import sha256_file
    from server_agent.store import Store, VersionRow

    store = Store(server_dir)
    try:
        target = store.model_path(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        store.add_version(
            VersionRow(
                version=version, robot_id=RID, created=time.time(), sha256=sha256_file(target),
                bytes=target.stat().st_size, arch=arch, dtype=dtype,
                metrics={"miou_rural": 0.5}, metrics_before={"miou_rural": 0.4}, parent="base",
            )
        )  # fmt: skip
    finally:
        store.close()


async def one_transfer(
    obs: Observer,
    b: Broker,
    server_dir: Path,
    child: Any,
    version: str,
    arch: str,
    dtype: str,
    frames: list[float],
    swaps: list[float],
    steps: list[tuple[float, float, str]],
    segmenting: bool,
    camera_fps: float,
) -> dict[str, Any]:
    from common.schemas import Command
    from models.checkpoint import save_checkpoint

    ckpt = server_dir.parent / f"{version}.pt"
    stored: Literal["fp16", "fp32"] = "fp16" if dtype == "fp16" else "fp32"
    await asyncio.to_thread(save_checkpoint, ckpt, child, arch=arch, version=version, dtype=stored)
    await asyncio.to_thread(register, server_dir, ckpt, version, arch, dtype)
    start = len(obs.messages)
    command = Command(cmd="transfer_model", args={"force": True})
    from common.mqtt import make_client

    t_command = time.perf_counter()
    async with make_client(
        MqttSettings(url=b.url("operator")), client_id=f"bench-op-{os.getpid()}"
    ) as op:
        await op.publish(b.topics.robot_cmd(RID), command.to_json(), qos=1)
    offer_topic = b.topics.model_offer(RID)
    status_topic = b.topics.model_status(RID)

    def is_offer(topic: str, payload: bytes) -> Any:
        d = json_obj(payload) if topic == offer_topic else None
        return d if d and d.get("version") == version else None

    def is_final(topic: str, payload: bytes) -> Any:
        d = json_obj(payload) if topic == status_topic else None
        ok = (
            d and d.get("version") == version and d.get("state") in ("active", "rejected", "failed")
        )
        return d if ok else None

    i_offer, (t_offer, offer) = await obs.wait(is_offer, start)
    _, (t_end, final) = await obs.wait(is_final, i_offer)
    if final["state"] != "active":
        raise RuntimeError(f"robot refused {version}: {final}")
    await asyncio.sleep(1.0 if segmenting else 0.2)
    chunk_topic = b.topics.model_chunk(RID)
    # phases: chunks out (offer to the last chunk the observer sees), the robot's assembly and
    # verification (to its "verified"), then load, dry run, persist and swap (to "active")
    t_last_chunk = t_offer
    t_verified: float | None = None
    for t, topic, payload in obs.messages[i_offer:]:
        if t > t_end:
            break
        if topic == chunk_topic:
            t_last_chunk = t
        elif topic == status_topic and t_verified is None:
            d = json_obj(payload)
            if d and d.get("version") == version and d.get("state") == "verified":
                t_verified = t
    wire = 0
    for _, topic, payload in obs.messages[i_offer:]:
        if topic in (chunk_topic, offer_topic):
            # PUBLISH QoS1: fixed header (1 + length bytes) + topic (2 + len) + packet id (2)
            body = 2 + len(topic) + 2 + len(payload)
            wire += 1 + (1 if body < 128 else 2 if body < 16384 else 3 if body < 2**21 else 4)
            wire += body
    result: dict[str, Any] = {
        "seconds_to_active": r(t_end - t_offer, 3),
        # command to offer: the server reading both checkpoints and making the delta
        "prepare_s": r(t_offer - t_command, 3),
        "encoding": offer.get("encoding") or "full",
        "full_bytes": int(offer.get("full_bytes") or offer["bytes"]),
        "wire_bytes": wire,
        "wire_bytes_over_payload": r(wire / int(offer["bytes"]), 4),
        "chunks": int(offer["chunks"]),
        "bytes": int(offer["bytes"]),
        "chunks_out_s": r(t_last_chunk - t_offer, 3),
        "verified_s": r(t_verified - t_offer, 3) if t_verified else None,
        "install_s": r(t_end - t_verified, 3) if t_verified else None,
    }
    if segmenting:
        before = [a for a in frames if t_offer - 3.0 <= a < t_offer]
        normal = median([(y - x) * 1000 for x, y in itertools.pairwise(before)])
        around = [a for a in frames if t_offer <= a <= t_end + 1.0]
        gaps = [(y - x) * 1000 for x, y in itertools.pairwise(around)]
        swap_t = next((s for s in swaps if t_offer <= s <= t_end + 1.0), None)
        near = [a for a in frames if swap_t is not None and swap_t - 1.0 <= a <= swap_t + 1.0]
        near_gaps = [(y - x) * 1000 for x, y in itertools.pairwise(near)]
        result.update(
            {
                "swap_pause_ms": r(max(near_gaps) if near_gaps else float("nan"), 1),
                "max_gap_during_transfer_ms": r(max(gaps) if gaps else float("nan"), 1),
                "normal_gap_ms": r(normal, 1),
                "frame_interval_ms": r(1000.0 / camera_fps, 1),
                "frames_during_transfer": len(around),
            }
        )
        limit = normal + 1000.0 / camera_fps
        result["swap_pause_ok"] = bool(near_gaps and max(near_gaps) <= limit)
        # the trace: every gap over the limit, and the install steps that ran in it (each
        # step waits for the frame in flight, then holds the next one back until it is done)
        slow = []
        for x, y in itertools.pairwise(around):
            if (y - x) * 1000 <= limit:
                continue
            inside = [
                {"step": name, "ms": r((e - s0) * 1000, 1)}
                for s0, e, name in steps
                if s0 < y and e > x
            ]
            slow.append(
                {"at_s": r(x - t_offer, 3), "gap_ms": r((y - x) * 1000, 1), "steps": inside}
            )
        result["gaps_over_limit"] = slow
    return result


async def on_broker(
    kind: str,
    args: argparse.Namespace,
    work: Path,
    child: Any,
    base: Path,
    prefix: str,
) -> dict[str, Any]:
    import robot_agent.agent  # noqa: F401 (torch import before timing)
    from robot_agent.agent import RobotAgent

    arch = "tiny" if args.tiny else args.arch
    out: dict[str, Any] = {}
    async with broker(kind, work / kind, [RID, RAW_RID], prefix) as b:
        server_dir = work / kind / "server"
        server = await spawn(
            "server", ["server", "--data-dir", str(server_dir), "--base-model", str(base),
                       "--no-gate"],
            work / kind / "logs", env=b.env("server"),
        )  # fmt: skip
        topics = b.topics
        obs = Observer([topics.robot(RID, "model/#"), topics.server_events, topics.server_state])
        ready = asyncio.Event()
        obs_task = asyncio.create_task(obs.run(MqttSettings(url=b.url("operator")), ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)

            def server_online(topic: str, payload: bytes) -> Any:
                d = json_obj(payload) if topic == topics.server_state else None
                return d if d and d.get("online") else None

            await obs.wait(server_online, 0, timeout=90)
            settings = load_settings(
                None, environ={},
                overrides={"data_dir": str(work / kind / "robot"), "prefix": prefix,
                           "mqtt": {"url": b.url(f"robot-{RID}")},
                           "robot": {"source": "sim:rural", "model": str(base),
                                     **({"infer_width": 160, "infer_height": 120}
                                        if args.tiny else {})}},
            )  # fmt: skip
            frames: list[float] = []
            swaps: list[float] = []
            steps: list[tuple[float, float, str]] = []
            async with RobotAgent(settings) as robot:
                await robot.link.wait_connected(10)
                real_keep, real_swap = robot._keep, robot.slot.swap

                def keep(stored: Any, preview: Any) -> Any:
                    out_ = real_keep(stored, preview)
                    frames.append(time.perf_counter())
                    return out_

                def swap(new: Any) -> Any:
                    swaps.append(time.perf_counter())
                    return real_swap(new)

                base_version = robot.slot.current.version
                robot._keep = keep  # type: ignore[method-assign]
                robot.slot.swap = swap  # type: ignore[method-assign]
                real_between = robot.slot.run_between_frames

                def between(fn: Any, *a: Any, **kw: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return real_between(fn, *a, **kw)
                    finally:
                        steps.append((t0, time.perf_counter(), getattr(fn, "__name__", "step")))

                robot.slot.run_between_frames = between  # type: ignore[method-assign]

                async def back_to_base() -> None:
                    # each transfer starts from the base, so each delta has the base as parent
                    if robot.slot.current.version != base_version:
                        await robot.updater.rollback()
                        await asyncio.sleep(0.5)  # the server records the rolled-back model

                for row, dtype in ROWS:
                    await back_to_base()
                    idle = await one_transfer(
                        obs, b, server_dir, child, f"{kind}-{row}-idle", arch, dtype,
                        frames, swaps, steps, False, robot.rs.camera_fps,
                    )  # fmt: skip
                    if args.tiny and dtype == "fp32":
                        out[row] = {"bytes": idle["bytes"], "idle": idle, "segmenting": idle}
                        continue
                    await back_to_base()
                    await robot.begin_segmentation()
                    await asyncio.sleep(4.0 if not args.tiny else 1.5)
                    seg = await one_transfer(
                        obs, b, server_dir, child, f"{kind}-{row}-seg", arch, dtype,
                        frames, swaps, steps, True, robot.rs.camera_fps,
                    )  # fmt: skip
                    await robot.end_segmentation()
                    out[row] = {"bytes": idle["bytes"], "idle": idle, "segmenting": seg}
        finally:
            obs_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await obs_task
            await stop([server])
        for row in out.values():
            raw = await raw_seconds(b, row["bytes"], 256 * 1024, args.repeats)
            row["raw_seconds_same_broker"] = r(raw, 3)
            row["over_raw"] = r(row["idle"]["seconds_to_active"] / raw, 3)
            # the transport alone (offer to last chunk) against the raw push
            row["transport_over_raw"] = r(row["idle"]["chunks_out_s"] / raw, 3)
            row["over_raw_segmenting"] = r(row["segmenting"]["seconds_to_active"] / raw, 3)
    return out


async def _run(args: argparse.Namespace, work: Path, prefix: str) -> dict[str, Any]:
    arch = "tiny" if args.tiny else args.arch
    base = (
        untrained_checkpoint(work / "base.pt", arch=arch, dtype="fp16", version="bench-base")
        if args.tiny
        else bench_checkpoint(work, arch=arch)
    )
    t0 = time.perf_counter()
    child = await asyncio.to_thread(
        finetuned, base, 5 if args.tiny else args.finetune_iterations, args.seed, args.tiny
    )
    finetune_s = time.perf_counter() - t0
    kinds = ["amqtt"] if args.tiny else [k for k in args.brokers.split(",") if k]
    if "mosquitto" in kinds and mosquitto_binary() is None:
        kinds.remove("mosquitto")
    result: dict[str, Any] = {
        "arch": arch,
        "chunk_size": 256 * 1024,
        "model": base.name,
        "finetune_iterations": 5 if args.tiny else args.finetune_iterations,
        "frozen_blocks": Settings().server.frozen_blocks,
        "seed": args.seed,
        "finetune_s": r(finetune_s, 1),
    }
    for kind in kinds:
        result[kind] = await on_broker(kind, args, work, child, base, prefix)
    # the headline keys: the fp16 delta (the default update) on the embedded broker, against
    # the whole fp32 checkpoint (what an update moved before)
    main = result["amqtt"]["fp16_delta"]
    full = result["amqtt"]["fp32_full"]
    result.update(
        {
            "bytes_over_full_fp32": r(main["bytes"] / full["bytes"], 4),
            "delta_encoding": main["idle"]["encoding"],
            "full_fp32_bytes": full["bytes"],
            "bytes": main["bytes"],
            "seconds_to_active": main["idle"]["seconds_to_active"],
            "raw_seconds_same_broker": main["raw_seconds_same_broker"],
            "over_raw": main["over_raw"],
            "transport_over_raw": main["transport_over_raw"],
            "wire_bytes_over_payload": main["idle"]["wire_bytes_over_payload"],
            "swap_pause_ms": main["segmenting"].get("swap_pause_ms"),
        }
    )
    if "mosquitto" in result:
        m = result["mosquitto"]["fp16_delta"]
        result["raw_seconds_mosquitto"] = m["raw_seconds_same_broker"]
    return result


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.tiny:
        args.repeats = 1
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="ars-bench-transfer-") as tmp:
        result = asyncio.run(_run(args, Path(tmp), settings.prefix))
    a = result["amqtt"]["fp16_delta"]
    result["targets"] = {
        "bytes_over_full_fp32_at_most_0.25": bool(result["bytes_over_full_fp32"] <= 0.25),
        "over_raw_at_most_1.25": bool(a["over_raw"] <= 1.25),
        "wire_bytes_over_payload_at_most_1.01": bool(a["idle"]["wire_bytes_over_payload"] <= 1.01),
        "swap_pause_within_one_frame_of_normal": bool(a["segmenting"].get("swap_pause_ok")),
        "fp32_full_active_under_1s_on_amqtt": bool(
            result["amqtt"]["fp32_full"]["idle"]["seconds_to_active"] < 1.0
        ),
    }
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result
