"""Start FineTune: one cancellable job per robot in a worker thread, with progress events.

The job loads the robot's running model (its newest version active on it, else the base
checkpoint), evaluates it, fine-tunes on the robot's labeled regions plus source-domain replay,
evaluates again, and registers the result as a new version (checkpoint file + registry row).
Progress is polled from the event loop (at most 4 events/s), so the worker never touches
asyncio. Every job is a row in ``jobs``; one a crash left 'running' is failed on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from common.config import ServerSettings
from common.errors import CommandRejected, ModelError
from common.hashing import sha256_file
from common.samples import LabeledSample
from common.schemas import Command, FinetuneStatus, new_id
from models.adaptation import IterationRule, bound_forgetting, snapshot
from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from models.data import SampleSets
from models.network import SegNet, resolve_device
from models.training import TrainProgress, evaluate, finetune
from server_agent.figures import figures, headline
from server_agent.gate import is_held_out
from server_agent.outbox import Outbox
from server_agent.samples import RegionSamples
from server_agent.store import Store, VersionRow

logger = logging.getLogger(__name__)

PROGRESS_PERIOD_S = 0.25
MAX_LOSSES = 1000
RESTART_REASON = "server restarted during fine-tuning"
JobState = Literal["idle", "running", "done", "failed", "cancelled"]


class _Cancelled(Exception):
    """The job was cancelled between phases."""


@dataclass
class _Progress:
    """The latest training progress, written by the worker, read by the event loop."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latest: TrainProgress | None = None
    seq: int = 0

    def update(self, progress: TrainProgress) -> None:
        with self.lock:
            self.latest = progress
            self.seq += 1

    def take(self, seen: int) -> tuple[int, TrainProgress | None]:
        with self.lock:
            return self.seq, (self.latest if self.seq != seen else None)


@dataclass
class _Job:
    job_id: str
    robot_id: str
    command: Command
    iterations: int
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: _Progress = field(default_factory=_Progress)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class _Outcome:
    version: str | None
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    losses: list[float]
    seconds: float
    cancelled: bool
    iterations_done: int
    counts: dict[str, int] = field(default_factory=dict)  # samples behind each figure


def thin(values: Sequence[float], limit: int = MAX_LOSSES) -> list[float]:
    """At most ``limit`` values, evenly spaced (the last one kept), to bound event size."""
    if len(values) <= limit:
        return [float(v) for v in values]
    idx = np.linspace(0, len(values) - 1, limit).round().astype(int)
    return [float(values[i]) for i in idx]


class FinetuneRunner:
    """Fine-tune jobs, at most one per robot."""

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        settings: ServerSettings,
        *,
        sets: SampleSets,
        base_checkpoint: Path | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        self.sets = sets
        self.base_checkpoint = base_checkpoint or DEFAULT_CHECKPOINT
        self.status = FinetuneStatus()
        self._jobs: dict[str, _Job] = {}
        self._cache: dict[tuple[str, int, tuple[int, int]], list[LabeledSample]] = {}
        self._cache_lock = threading.Lock()
        self._anchor: float | None = None  # the base model's urban mIoU on the guard frames
        self._base: SegNet | None = None  # the base model: the guard's anchor, the teacher

    @property
    def iteration_rule(self) -> IterationRule:
        """Iterations for a number of labeled whole frames (``models.adaptation``)."""
        s = self.settings
        return IterationRule(s.iterations_per_frame, s.iterations, s.iterations_cap)

    @property
    def train_hw(self) -> tuple[int, int]:
        return self.settings.train_height, self.settings.train_width

    def running(self, rid: str) -> bool:
        return rid in self._jobs

    # --- commands --------------------------------------------------------------------------
    async def start(self, rid: str, command: Command) -> None:
        if rid in self._jobs:
            raise CommandRejected(
                f"fine-tuning is already running for {rid} (job {self._jobs[rid].job_id})"
            )
        iterations = command.args.get("iterations")
        if iterations is not None and (
            not isinstance(iterations, int)
            or isinstance(iterations, bool)
            or not (1 <= iterations <= 1_000_000)
        ):
            raise CommandRejected("args.iterations must be an integer in 1..1000000")
        labeled = await asyncio.to_thread(self.store.labeled_regions, rid)
        if not labeled:
            raise CommandRejected(
                f"no annotations for {rid}: label some regions first (Start Annotation)"
            )
        if iterations is None:  # the training rule: more labeled pixels, more iterations
            iterations = self.iteration_rule(
                sum(r.box[2] * r.box[3] / (r.frame_size[0] * r.frame_size[1]) for r in labeled)
            )
        job = _Job(job_id=new_id(), robot_id=rid, command=command, iterations=iterations)
        self._jobs[rid] = job
        try:
            await asyncio.to_thread(self.store.add_job, job.job_id, rid, command.id)
        except BaseException:
            self._jobs.pop(rid, None)
            raise
        self._set_status(job, "running")
        await self.outbox.accepted(
            command,
            rid,
            f"fine-tuning on {len(labeled)} labeled regions, {iterations} iterations",
            job_id=job.job_id,
            regions=len(labeled),
            iterations=iterations,
        )
        job.task = asyncio.create_task(self._guarded(job), name=f"finetune-{rid}-{job.job_id}")

    async def cancel(self, rid: str, command: Command) -> None:
        job = self._jobs.get(rid)
        if job is None:
            raise CommandRejected(f"no fine-tuning is running for {rid}")
        await self.outbox.accepted(command, rid, f"cancelling job {job.job_id}", job_id=job.job_id)
        job.cancel.set()
        await self.outbox.done(
            command, rid, f"job {job.job_id} cancel requested", job_id=job.job_id
        )

    async def close(self, timeout: float = 60.0) -> None:
        """Cancel every job and wait for its worker to stop."""
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        for job in jobs:
            if job.task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(job.task), timeout)

    def recover(self) -> list[tuple[str, str, str]]:
        """Sync, at start: jobs a crash left running become failed (job, robot, command ids)."""
        return self.store.fail_running_jobs(RESTART_REASON)

    # --- the job ---------------------------------------------------------------------------
    def _set_status(
        self,
        job: _Job,
        state: JobState,
        progress: TrainProgress | None = None,
        error: str | None = None,
    ) -> None:
        self.status = FinetuneStatus(
            state=state,
            robot_id=job.robot_id,
            job_id=job.job_id,
            iteration=progress.iteration if progress else 0,
            iterations=job.iterations,
            percent=round(100.0 * progress.iteration / job.iterations, 1) if progress else 0.0,
            loss=progress.loss if progress else None,
            eta_s=round(progress.eta_s, 1) if progress else None,
            error=error,
        )
        self.outbox.changed()

    async def _progress_event(self, job: _Job, p: TrainProgress) -> None:
        self._set_status(job, "running", p)
        await self.outbox.event(
            "progress",
            f"fine-tuning {job.robot_id}: {p.iteration}/{p.iterations} loss {p.loss:.4f}",
            ref=job.command.id,
            cmd=job.command.cmd,
            robot_id=job.robot_id,
            data={
                "job_id": job.job_id,
                "iteration": p.iteration,
                "iterations": p.iterations,
                "loss": round(p.loss, 6),
                "percent": round(100.0 * p.iteration / p.iterations, 1),
                "eta_s": round(p.eta_s, 2),
                "lr": p.lr,
                "elapsed_s": round(p.elapsed_s, 2),
            },
        )

    async def _guarded(self, job: _Job) -> None:
        try:
            await self._run(job)
        except Exception:  # reporting itself failed (broker gone): log, never lose it silently
            logger.exception("robot %s: fine-tune job %s", job.robot_id, job.job_id)

    async def _run(self, job: _Job) -> None:
        rid, command = job.robot_id, job.command
        work = asyncio.create_task(asyncio.to_thread(self._work, job))
        seen = 0
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=PROGRESS_PERIOD_S)
                seen, latest = job.progress.take(seen)
                if latest is not None:
                    await self._progress_event(job, latest)
                if done:
                    break
            outcome = work.result()
        except Exception as exc:  # any failure of the job is reported, never raised
            logger.exception("robot %s: fine-tune job %s failed", rid, job.job_id)
            reason = str(exc) or exc.__class__.__name__
            await asyncio.to_thread(self.store.finish_job, job.job_id, "failed", error=reason)
            self._set_status(job, "failed", error=reason)
            await self.outbox.failed(
                command, rid, f"fine-tuning failed: {reason}", job_id=job.job_id
            )
            return
        finally:
            self._jobs.pop(rid, None)
        if outcome.cancelled:
            await asyncio.to_thread(self.store.finish_job, job.job_id, "cancelled")
            self._set_status(job, "cancelled", job.progress.latest)
            await self.outbox.failed(
                command,
                rid,
                f"fine-tuning cancelled after {outcome.iterations_done} of {job.iterations} "
                "iterations; no version registered",
                job_id=job.job_id,
                cancelled=True,
                iterations_done=outcome.iterations_done,
            )
            return
        await asyncio.to_thread(self.store.finish_job, job.job_id, "done", version=outcome.version)
        self._set_status(job, "done", job.progress.latest)
        before, after = outcome.metrics_before, outcome.metrics_after
        rows = figures(before, after, outcome.counts)
        await self.outbox.done(
            command,
            rid,
            headline(str(outcome.version), outcome.seconds, rows, after.get("blend")),
            job_id=job.job_id,
            version=outcome.version,
            metrics_before=before,
            metrics_after=after,
            figures=rows,
            losses=thin(outcome.losses),
            seconds=round(outcome.seconds, 2),
        )

    # --- worker thread ---------------------------------------------------------------------
    def _cached(self, kind: str, n: int) -> list[LabeledSample]:
        key = (kind, n, self.train_hw)
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is None:
            if kind == "replay":
                hit = self.sets.replay(n, self.train_hw)
            else:
                hit = self.sets.heldout(kind, n, self.train_hw)
            with self._cache_lock:
                self._cache[key] = hit
        return hit

    def _parent(self, rid: str) -> Path:
        """The robot's running model: its active registered version, else the base checkpoint."""
        active = self.store.robots().get(rid)
        if active is not None and self.store.version(active) is not None:
            path = self.store.model_path(active)
            if path.exists():
                return path
        return self.base_checkpoint

    def _samples(self, rid: str) -> tuple[RegionSamples, RegionSamples, RegionSamples]:
        """The robot's labeled regions: (to train on, held out for the gate, all), decoded
        on access. Each is read once here, so an unreadable one fails the job up front."""
        rows = self.store.labeled_regions(rid)
        for row in rows:
            RegionSamples(self.store, [row], self.train_hw)[0]
        every = self.settings.holdout_every
        held_ids = {r.region_id for r in rows if is_held_out(r.region_id, every, len(rows))}
        held = [r for r in rows if r.region_id in held_ids]
        train = [r for r in rows if r.region_id not in held_ids]
        if not train:  # every region hashed into the held-out share: train on them all
            train, held = held, []
        return (
            RegionSamples(self.store, train, self.train_hw),
            RegionSamples(self.store, held, self.train_hw),
            RegionSamples(self.store, rows, self.train_hw),
        )

    def _metrics(
        self,
        model: SegNet,
        regions: Sequence[LabeledSample],
        held: Sequence[LabeledSample],
        urban: float | None = None,
    ) -> dict[str, float]:
        """New domain (rural frames, all labeled regions, held-out ones) and old domain
        (`urban`, when the forgetting guard has just measured it on the same frames)."""
        n = self.settings.eval_frames
        if urban is None:
            urban = evaluate(model, self._cached("urban", n))
        out = {
            "miou_rural": round(evaluate(model, self._cached("rural", n)), 6),
            "miou_urban": round(urban, 6),
            "miou_regions": round(evaluate(model, regions), 6),
        }
        if held:
            out["miou_heldout"] = round(evaluate(model, held), 6)
        return out

    def _base_model(self) -> SegNet:
        """The base checkpoint, loaded once and never trained: what the forgetting budget is
        counted from, and the teacher the replay frames are distilled to."""
        with self._cache_lock:
            hit = self._base
        if hit is None:
            hit, _ = load_checkpoint(self.base_checkpoint)
            hit.to(resolve_device(self.settings.device)).eval()
            with self._cache_lock:
                self._base = hit
        return hit

    def _anchor_urban(self) -> float:
        """The base checkpoint's old-domain mIoU on the guard frames (the gate's urban set):
        what the forgetting budget is counted from, over every round of every robot."""
        with self._cache_lock:
            hit = self._anchor
        if hit is None:
            hit = evaluate(self._base_model(), self._cached("urban", self.settings.eval_frames))
            with self._cache_lock:
                self._anchor = hit
        return hit

    def _guard(
        self, model: SegNet, running: dict[str, torch.Tensor]
    ) -> tuple[dict[str, float], float | None]:
        """The forgetting guard (``models.adaptation.bound_forgetting``): the share of the
        fine-tune's change kept and the base model's urban mIoU it was held to, and the
        candidate's own urban mIoU (None when the guard is off)."""
        budget = self.settings.urban_budget
        if budget >= 1.0:
            return {}, None
        urban = self._cached("urban", self.settings.eval_frames)
        anchor = self._anchor_urban()
        result = bound_forgetting(model, running, lambda m: evaluate(m, urban), anchor, budget)
        if result.blend < 1.0:
            logger.info(
                "forgetting guard: kept %.3f of the change (urban %.4f, base %.4f, budget %.3f)",
                result.blend, result.old_miou, anchor, budget,
            )  # fmt: skip
        return {"urban_base": round(anchor, 6), "blend": result.blend}, result.old_miou

    def _check(self, job: _Job) -> None:
        if job.cancel.is_set():
            raise _Cancelled

    def _work(self, job: _Job) -> _Outcome:
        start = time.monotonic()
        rid = job.robot_id
        try:
            parent_path = self._parent(rid)
            model, meta = load_checkpoint(parent_path)
            model.to(resolve_device(self.settings.device))  # CUDA when present, as the robot
            samples, held, labeled = self._samples(rid)
            if not samples:
                raise ModelError(f"no labeled regions of {rid} could be read")
            replay = self._cached("replay", self.settings.replay_frames)
            self._check(job)
            before = self._metrics(model, labeled, held)
            running = snapshot(model)  # the robot's model, to blend back toward
            teacher = self._base_model() if self.settings.distill_weight > 0 else None
            self._check(job)
            result = finetune(
                model,
                samples,
                replay,
                iterations=job.iterations,
                **self.settings.recipe(),
                teacher=teacher,
                size=self.train_hw,
                progress=job.progress.update,
                should_stop=job.cancel.is_set,
            )
            if result.cancelled:
                raise _Cancelled
            guard, urban = self._guard(model, running)
            after = self._metrics(model, labeled, held, urban) | guard
            self._check(job)
            version = self._next_version(rid)
            path = self.store.model_path(version)
            save_checkpoint(
                path,
                model,
                arch=meta.arch,
                version=version,
                metrics=after,
                dtype=self.settings.model_dtype,
                classes=meta.classes,
            )
            self.store.add_version(
                VersionRow(
                    version=version,
                    robot_id=rid,
                    created=time.time(),
                    sha256=sha256_file(path),
                    bytes=path.stat().st_size,
                    arch=meta.arch,
                    dtype=self.settings.model_dtype,
                    metrics=after,
                    metrics_before=before,
                    parent=meta.version,
                    job_id=job.job_id,
                )
            )
        except _Cancelled:
            latest = job.progress.latest
            return _Outcome(None, {}, {}, [], time.monotonic() - start, True,
                            latest.iteration if latest else 0)  # fmt: skip
        logger.info("robot %s: job %s registered %s", rid, job.job_id, version)
        n = self.settings.eval_frames
        counts = {"miou_heldout": len(held), "miou_regions": len(labeled),
                  "miou_rural": n, "miou_urban": n}  # fmt: skip
        return _Outcome(
            version, before, after, result.losses, time.monotonic() - start, False,
            result.iterations_done, counts,
        )  # fmt: skip

    def _next_version(self, rid: str) -> str:
        taken = {v.version for v in self.store.versions()}
        n = len(self.store.versions(rid)) + 1
        while f"{rid[:100]}-v{n}" in taken:
            n += 1
        return f"{rid[:100]}-v{n}"
