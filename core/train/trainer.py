"""The one trainer scaffold (`TrainSpec` + `Trainer`) and its Accelerate plumbing: accelerator,
resume guard, atomic checkpoints, NaN guard, metrics.

Accelerate saves and restores the training state (`save_state` / `load_state`); what it does not
do is make a checkpoint folder appear atomically or pick the newest *complete* one, so that part
is written here: every checkpoint is saved into a hidden temp folder and renamed into place.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler

from core.train.checkpoints import (_quarantine, _unreadable, clean_partial_checkpoints, latest_checkpoint,
                                    list_checkpoints)
from core.config.store import save_config
from core.errors import TrainingDiverged, UserError
from core.io import append_jsonl, atomic_dir, atomic_write_json, naming_path
from core.models.compile import CompiledOrEager
from core.precision import effective_precision
from core.workspace import LAB_CONFIG, Workspace



def fresh_accelerator_state() -> None:
    """Forget the previous Accelerator's settings (the process group, if any, is kept).

    Accelerate keeps mixed precision and gradient accumulation in process-wide singletons and
    refuses a second Accelerator with other settings; stages run one after another in one process
    (`core run`, the lab's job slot), each with its own precision.
    """
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def make_accelerator(mixed_precision: str, grad_accum: int, project_dir: Path | None, seed: int,
                     log_with: str | None = None) -> Accelerator:
    """One Accelerator for CPU, one GPU or many (torchrun / accelerate launch set the env)."""
    cpu = not torch.cuda.is_available()
    if cpu and mixed_precision == "fp16":
        mixed_precision = "bf16"          # fp16 autocast on CPU is slow and needs a scaler: use bf16
    if cpu:
        mixed_precision = effective_precision("cpu", mixed_precision)
    fresh_accelerator_state()
    accelerator = Accelerator(
        mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu,
        project_config=ProjectConfiguration(project_dir=project_dir and str(project_dir)), log_with=log_with)
    set_seed(seed, device_specific=True)
    return accelerator


def save_checkpoint(accelerator: Accelerator, folder: Path, step: int, total_limit: int) -> Path:
    """accelerator.save_state into `.checkpoint-STEP.tmp`, then rename; keep the newest `total_limit`.

    Every rank calls this (save_state writes each rank's RNG state); only the main process
    renames and prunes, so a checkpoint appears exactly once and only when complete.
    """
    final = folder / f"checkpoint-{step}"
    tmp = folder / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with naming_path(tmp):
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(folder)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_step(accelerator: Accelerator, folder: Path) -> int:
    """Load the newest checkpoint that loads into the prepared objects; 0 when there is none.

    A checkpoint that fails to load (truncated file, bad header) is renamed to
    `checkpoint-STEP.corrupt` (kept for inspection, never listed again) with a warning naming it
    and the cause, and the next older one is tried. A failed load_state may have filled some
    objects; the older checkpoint's load_state overwrites every one of them.
    """
    if accelerator.is_main_process:
        clean_partial_checkpoints(folder)
    accelerator.wait_for_everyone()
    partly_loaded = False
    for step, path in reversed(list_checkpoints(folder)):
        problem = _unreadable(path)
        if problem is None:
            try:
                accelerator.load_state(str(path))
                return step
            except Exception as e:  # noqa: BLE001 - any failure to read it makes it unusable
                if "size mismatch" in str(e):   # intact, but made by another model shape
                    raise UserError(f"{path} was made by a different model shape; rerun with "
                                    "--restart (or another workspace) to start over") from e
                problem, partly_loaded = f"{type(e).__name__}: {e}", True
        _quarantine(accelerator, path, problem)
    if partly_loaded:       # the objects may hold part of a bad checkpoint: never train on that
        raise UserError(f"no checkpoint in {folder} loads (each was renamed to *.corrupt); "
                        "rerun to start from step 0")
    return 0


def guard_resume(accelerator: Accelerator, spec: "TrainSpec", cfg=None) -> None:
    """The one rule for what a run may resume from `spec.ckpt_dir`.

    Checkpoints of another run (`spec.run_key` differs from the run key file beside them: another
    label budget, data or config) are that run's progress, not this one's: removed, so the run
    starts at step 0. Checkpoints of this run made by another model shape (a `spec.shape` field
    differs from the lab_config.json beside them) are refused, as load_state would fail deep
    inside torch with a size mismatch; steps, logging and lr may change between runs.
    """
    folder = spec.ckpt_dir
    if spec.run_key is not None and accelerator.is_main_process and folder.exists():
        marker = Workspace.run_key_of(folder)
        if not marker.exists() or json.loads(marker.read_text()).get("key") != spec.run_key:
            shutil.rmtree(folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    section, fields = spec.shape
    saved_file = Workspace.lab_config_of(folder)
    if not fields or cfg is None or not saved_file.exists() or latest_checkpoint(folder) is None:
        return
    saved = json.loads(saved_file.read_text()).get(section, {})
    now = getattr(cfg, section)
    changed = [f for f in fields if f in saved and _plain(saved[f]) != _plain(getattr(now, f))]
    if changed:
        raise UserError(f"checkpoints in {folder} were made with different {section}."
                        f"{', '.join(changed)}; rerun with --restart (or another workspace) to start over")


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def check_finite(accelerator: Accelerator, loss: torch.Tensor, step: int, ckpt_folder: Path | None) -> float:
    """Mean loss over ranks as a float, or TrainingDiverged naming the step (same verdict on every rank)."""
    value = float(accelerator.reduce(loss.detach().float(), reduction="mean"))
    if not math.isfinite(value):
        last = latest_checkpoint(ckpt_folder) if ckpt_folder is not None else None
        where = f"last good checkpoint: {last[1]}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(f"loss is {value} at step {step}; training stopped ({where})")
    return value


def adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the device (CPU and CUDA do)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def pool_row_weights(pools: pd.DataFrame) -> np.ndarray:
    """Per-row sampling weights so that each pool's share of draws equals its `weight`."""
    from core.data.pools import pool_sampler_weights  # the data layer owns the pool-mixing rule
    return pool_sampler_weights(pools)


def step_indices(weights: np.ndarray, batch: int, seed: int, step: int, micro: int,
                 rank: int, world: int) -> np.ndarray:
    """This rank's shard of the global batch drawn for (step, micro-step).

    Written by hand instead of a DataLoader + WeightedRandomSampler because the draw is a pure
    function of (seed, step): a resumed run sees exactly the data order of an uninterrupted one
    without saving sampler state, and ranks take disjoint slices of one global draw.
    """
    rng = np.random.default_rng([seed, step, micro])
    idx = rng.choice(len(weights), size=batch * world, replace=True, p=weights)
    return idx[rank::world]


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A CPU generator for noise/timesteps keyed by (seed, step, micro, rank) — resume-exact."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 97 + micro) * 131 + rank)


class MetricsLog:
    """JSON lines the UI reads live: step, loss, lr, images_per_s, time (main process only)."""

    def __init__(self, path: Path | None, accelerator: Accelerator, stage: str,
                 progress: Callable[[dict], None] | None = None, total: int = 0):
        self.path, self.acc, self.stage = path, accelerator, stage
        self.progress, self.total = progress, total
        self.t0 = time.time()
        self._last_t, self._last_images = time.perf_counter(), 0

    def tick(self, step: int, images: int) -> float:
        """Images/s since the previous tick."""
        now = time.perf_counter()
        rate = (images - self._last_images) / max(now - self._last_t, 1e-9)
        self._last_t, self._last_images = now, images
        return rate

    def log(self, record: dict) -> None:
        record = {"stage": self.stage, **record, "time": round(time.time() - self.t0, 3)}
        if self.acc.is_main_process and self.path is not None:     # None: a run kept in memory
            append_jsonl(self.path, record)
            if self.acc.trackers:
                self.acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                             step=record.get("step"))

    def report(self, step: int, **extra) -> None:
        if self.progress is not None and self.acc.is_main_process:
            self.progress({"stage": self.stage, "step": step, "total": self.total, **extra})


def train_loop(accelerator: Accelerator, *, start: int, steps: int, step_fn: Callable[[int], torch.Tensor],
               ckpt_dir: Path | None, checkpoint_every: int, total_limit: int, stop=None,
               after_step: Callable[[int, float], None] | None = None) -> dict:
    """Run optimizer steps start..steps-1 with periodic checkpoints, NaN guard, stop and Ctrl-C.

    `step_fn(step)` does one optimizer step (all its micro-batches) and returns the loss.
    Stop event or KeyboardInterrupt: a checkpoint of the finished steps is written, then return;
    without `ckpt_dir` there is nothing to save, so Ctrl-C propagates to the caller.
    """
    step = start
    try:
        while step < steps:
            if stop is not None and stop.is_set():
                return _halt(accelerator, ckpt_dir, step, total_limit, "stopped")
            loss = step_fn(step)
            value = check_finite(accelerator, loss, step + 1, ckpt_dir)   # 1-based, like checkpoint names
            step += 1
            if ckpt_dir is not None and (step % checkpoint_every == 0 or step == steps):
                save_checkpoint(accelerator, ckpt_dir, step, total_limit)
            if after_step is not None:
                after_step(step, value)
    except KeyboardInterrupt:
        if ckpt_dir is None:
            raise
        return _halt(accelerator, ckpt_dir, step, total_limit, "interrupted")
    return {"step": step, "stopped": False}


def _halt(accelerator: Accelerator, ckpt_dir: Path | None, step: int, total_limit: int, why: str) -> dict:
    if ckpt_dir is None:
        return {"step": step, "stopped": True, "reason": why}
    last = latest_checkpoint(ckpt_dir)
    if step > 0 and (last is None or last[0] != step):
        save_checkpoint(accelerator, ckpt_dir, step, total_limit)
    return {"step": step, "stopped": True, "reason": why, "checkpoint": str(ckpt_dir / f"checkpoint-{step}")}


@dataclass(frozen=True)
class TrainSpec:
    """One trainer's loop, filled from its config section. `ckpt_dir=None`: a run kept in memory
    (a grid run's classifier: minutes long and restarted whole) that never checkpoints."""
    stage: str
    steps: int                              # optimizer steps
    seed: int
    precision: str                          # the config's mixed_precision
    batch_size: int                         # per process and micro-batch (images/s in the log)
    ckpt_dir: Path | None = None
    checkpoint_every: int = 0
    total_limit: int = 1
    grad_accum: int = 1
    schedule: str = "constant"              # a diffusers get_scheduler name
    warmup_steps: int = 0
    metrics_file: Path | None = None
    log_every: int = 10
    run_key: str | None = None              # guard_resume: checkpoints of another run are dropped
    shape: tuple[str, tuple[str, ...]] = ("", ())   # guard_resume: (section, fields) a resume must match
    trackers: bool = False                  # TensorBoard through Accelerate, when installed
    compile: bool = False                   # Trainer.compiled: torch.compile with eager fallback


class Trainer:
    """The scaffold every trainer fills with its models and a step function:

        trainer = Trainer(spec, cfg)                  # Accelerator + resume guard
        model, opt = trainer.prepare(model, opt)      # + the lr schedule
        result = trainer.run(step_fn, progress, stop, on_step)   # resume, loop, checkpoints, log
        if not result["stopped"]: trainer.save(folder, write)    # atomic, main process
        trainer.end()
    """

    def __init__(self, spec: TrainSpec, cfg=None):
        self.spec, self.cfg = spec, cfg
        # TensorBoard is optional: logged through Accelerate only where the package is installed
        self.tracker = "tensorboard" if spec.trackers and importlib.util.find_spec("tensorboard") else None
        self.acc = make_accelerator(spec.precision, spec.grad_accum, spec.ckpt_dir, spec.seed, self.tracker)
        if spec.ckpt_dir is not None:
            guard_resume(self.acc, spec, cfg)
        self.optimizers, self.schedulers = [], []
        self.metrics = MetricsLog(spec.metrics_file, self.acc, spec.stage)

    def prepare(self, *objects):
        """accelerator.prepare, plus the one warm-up rule: every optimizer gets diffusers'
        get_scheduler(spec.schedule, spec.warmup_steps) over spec.steps, stepped once per optimizer
        step (a constant lr without warm-up: none, so nothing to step or checkpoint). Counts are
        x num_processes: Accelerate steps a prepared scheduler once per process."""
        s, world = self.spec, self.acc.num_processes
        scheds = [] if s.schedule == "constant" and not s.warmup_steps else [
            get_scheduler(s.schedule, o, num_warmup_steps=s.warmup_steps * world, num_training_steps=s.steps * world)
            for o in objects if isinstance(o, torch.optim.Optimizer)]
        out = self.acc.prepare(*objects, *scheds)
        out = list(out) if isinstance(out, (tuple, list)) else [out]
        self.schedulers = out[len(objects):]
        self.optimizers += [o for o in out[:len(objects)] if isinstance(o, AcceleratedOptimizer)]
        return out[0] if len(objects) == 1 else tuple(out[:len(objects)])

    def compiled(self, forward):
        """What a step function calls instead of `forward` (a prepared model or a function of one):
        its torch.compile, forward + backward, when spec.compile, falling back to eager with a
        warning. Only the step calls it: the prepared model itself is what save_state, unwrap_model
        and the evaluations see, so checkpoints and saved weights keep their keys."""
        return CompiledOrEager(forward, training=True) if self.spec.compile else forward

    @property
    def lr(self) -> float | None:
        return self.optimizers[0].param_groups[0]["lr"] if self.optimizers else None

    def run(self, step_fn: Callable, progress=None, stop=None, on_step: Callable[[int, float], None] | None = None
            ) -> dict:
        """Resume from the newest loadable checkpoint, then optimizer steps up to spec.steps.

        `step_fn(step)` does one optimizer step (all micro-batches) and returns its loss, or (loss,
        extra metrics-log fields). The scaffold then steps the lr schedules, guards against NaN,
        checkpoints, logs the mean loss since the previous record, calls `on_step(step, loss)`
        (1-based) and reports progress. Stop / Ctrl-C: see train_loop.
        """
        s, acc, log = self.spec, self.acc, self.metrics
        start = resume_step(acc, s.ckpt_dir) if s.ckpt_dir is not None else 0
        if s.ckpt_dir is not None and acc.is_main_process:     # what guard_resume checks next time
            if self.cfg is not None:
                save_config(self.cfg, s.ckpt_dir, LAB_CONFIG)
            if s.run_key is not None:
                atomic_write_json(Workspace.run_key_of(s.ckpt_dir), {"key": s.run_key})
        if self.tracker and not acc.trackers:
            acc.init_trackers(s.stage)
        log.progress, log.total = progress, s.steps
        per_step = s.batch_size * s.grad_accum * acc.num_processes
        log.tick(start, start * per_step)
        window, extra = [], {}

        def one_step(step: int) -> torch.Tensor:
            out = step_fn(step)
            loss, more = out if isinstance(out, tuple) else (out, {})
            extra.update(more)
            for sched in self.schedulers:
                sched.step()
            return loss

        def after_step(step: int, loss: float) -> None:
            window.append(loss)
            if s.metrics_file is not None and (step % s.log_every == 0 or step == s.steps):
                log.log({"step": step, "loss": float(np.mean(window)), **extra, "lr": self.lr,
                         "images_per_s": log.tick(step, step * per_step)})
                window.clear()
            if on_step is not None:
                on_step(step, loss)
            log.report(step, loss=loss)

        return train_loop(acc, start=start, steps=s.steps, step_fn=one_step, ckpt_dir=s.ckpt_dir,
                          checkpoint_every=s.checkpoint_every, total_limit=s.total_limit, stop=stop,
                          after_step=after_step)

    def save(self, folder: Path, write: Callable[[Path], None]) -> None:
        """The final model: `write(tmp)` on the main process into a temp folder that replaces
        `folder` whole (core.io.atomic_dir), with the run's config beside it."""
        if self.acc.is_main_process:
            with atomic_dir(folder) as tmp:
                write(tmp)
                if self.cfg is not None:
                    save_config(self.cfg, tmp, LAB_CONFIG)
        self.acc.wait_for_everyone()

    def end(self) -> None:
        self.acc.wait_for_everyone()
        self.acc.end_training()
