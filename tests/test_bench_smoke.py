"""Each system benchmark runs from the command line at its tiny setting and prints its keys.

The benches mostly wait (process start-up, brokers, warm-up), so the selected ones start
together, as processes, when the first test asks; each test then reads its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAGS = {"robot": ["--no-sweep"]}
#: Benches that speak MQTT run under a prefix other than the default: every topic they and the
#: processes they start use, and the broker's ACL, must follow the configured one.
PREFIXED = {"transfer", "preview", "loop", "fleet"}


def start(name: str) -> subprocess.Popen[str]:
    prefix = ["--prefix", "smoke"] if name in PREFIXED else []
    argv = [sys.executable, "-m", "ars.cli", "bench", *prefix, name, "--json", "--tiny"]
    return subprocess.Popen(
        [*argv, *FLAGS.get(name, [])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: a kill reaches the agents it started too
    )


@pytest.fixture(scope="module")
def started(request: pytest.FixtureRequest) -> Iterator[dict[str, subprocess.Popen[str]]]:
    names = [
        item.name.removeprefix("test_").removesuffix("_bench_keys")
        for item in request.session.items
        if item.module is sys.modules[__name__]
    ]
    procs = {name: start(name) for name in names}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def bench(
    started: dict[str, subprocess.Popen[str]], name: str, timeout: float = 240
) -> dict[str, Any]:
    stdout, stderr = started[name].communicate(timeout=timeout)
    assert started[name].returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_robot_bench_keys(started: dict[str, subprocess.Popen[str]]) -> None:
    out = bench(started, "robot")
    for key in ("fps", "infer_ms_p50", "mining_ms_p50", "preview_encode_ms_p50", "loop_ms_p50",
                "mining_over_infer", "cpu_cores"):  # fmt: skip
        assert key in out, key
    assert out["fps"] > 0 and out["frames"] > 1
    assert out["mining_ms_p50"] > 0 and out["infer_ms_p50"] > 0
    rows = out["runtime"]  # torch and onnx at the inference size, onnx at the larger one
    assert [(x["runtime"], x["infer_size"]) for x in rows] == [
        ("torch", "160x120"), ("onnx", "160x120"), ("onnx", "320x240"),
    ]  # fmt: skip
    assert all(x["fps"] > 0 and x["store_ms_p50"] > 0 for x in rows)
    assert out["camera"].endswith("at 30 fps")
    costs = out["frame_costs"]
    assert costs["runtime"] == "onnx" and costs["ms_p50"]["inference"] > 0
    assert costs["share_of_frames"]["region"] == 0.5  # one candidate per 2 frames


def test_transfer_bench_keys(started: dict[str, subprocess.Popen[str]]) -> None:
    out = bench(started, "transfer")
    for key in ("bytes", "seconds_to_active", "raw_seconds_same_broker", "over_raw",
                "wire_bytes_over_payload", "swap_pause_ms", "bytes_over_full_fp32"):  # fmt: skip
        assert key in out, key
    assert out["wire_bytes_over_payload"] >= 1.0
    assert out["amqtt"]["fp16_delta"]["segmenting"]["frames_during_transfer"] > 0
    assert out["delta_encoding"] == "delta" and 0 < out["bytes_over_full_fp32"] < 1


def test_preview_bench_keys(started: dict[str, subprocess.Popen[str]]) -> None:
    out = bench(started, "preview")
    for key in ("latency_ms_p50", "latency_ms_p99", "delivered_ratio", "web_cpu_percent"):
        assert key in out, key
    assert out["delivered_ratio"] > 0.5
    assert "10_per_s_with_slow_client" in out and "30_per_s" in out


def test_loop_bench_keys(started: dict[str, subprocess.Popen[str]]) -> None:
    out = bench(started, "loop")
    for key in ("transfer_data_s", "annotate_s", "finetune_s", "evaluate_s", "transfer_model_s",
                "total_s", "bytes_up", "bytes_up_over_full_frames", "bytes_down"):  # fmt: skip
        assert key in out, key
    assert out["bytes_up"] > 0 and out["bytes_down"] > 0 and out["regions"] >= 1


def test_fleet_bench_keys(started: dict[str, subprocess.Popen[str]]) -> None:
    out = bench(started, "fleet")
    row = out["per_n"]["1"]
    for key in ("robot_fps_mean", "broker_cpu_percent", "server_cpu_percent", "web_cpu_percent",
                "broker_max_rss_mib", "server_max_rss_mib", "web_max_rss_mib",
                "robot_max_rss_mib", "dropped_previews"):  # fmt: skip
        assert key in row, key
    assert row["robot_max_rss_mib"] > 0


def test_annotation_bench_keys(started: dict[str, subprocess.Popen[str]]) -> None:
    # four agents and chromium start, three passes in the page: minutes on a loaded machine
    out = bench(started, "annotation", timeout=540)
    for key in ("strokes_median", "baseline_strokes_median", "accuracy_median", "clicks_median",
                "seconds_median", "per_region", "saved_accuracy_median"):  # fmt: skip
        assert key in out, key
    full, base = out["per_region"]["full"], out["per_region"]["baseline"]
    assert len(full) == len(base) == out["regions"] >= 1
    # every region was worked on in the page; reached means the target accuracy
    assert all(row["strokes"] >= 1 and row["clicks"] >= row["strokes"] for row in full + base)
    assert all(row["reached"] == (row["accuracy"] >= 0.95) for row in full + base)
    assert all(row["strokes"] <= 4 + 1 for row in full + base)  # --tiny gives up after 4
    # what Save sent is what the editor held
    assert out["saved_accuracy_median"] == out["accuracy_median"]
    assert sum(r["tools"].get("brush", 0) + r["tools"].get("polygon", 0) for r in base) >= 1
    assert all(set(r["tools"]) <= {"brush", "polygon"} for r in base)
