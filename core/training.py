"""Shared Accelerate plumbing for the trainers: accelerator, atomic checkpoints, NaN guard, metrics.

Accelerate saves and restores the training state (`save_state` / `load_state`); what it does not
do is make a checkpoint folder appear atomically or pick the newest *complete* one, so that part
is written here: every checkpoint is saved into a hidden temp folder and renamed into place.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from core.errors import TrainingDiverged, UserError
from core.io import append_jsonl, naming_path
from core.workspace import Workspace

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")




def cpu_has_fast_bf16() -> bool:
    """Native bf16 on this CPU (AVX-512 BF16 or AMX). Without it torch emulates bf16: on a 2-core
    AVX2 EPYC a bf16-autocast UNet forward took 45x, a latent-classifier step 15x and a MobileNet
    step 5x the fp32 time (measured, issue 11), so reduced precision would only cost time there."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:      # a torch without the probes: keep what the config asks
        return True


def effective_precision(device: torch.device | str, precision: str) -> str:
    """What a config precision runs as on `device`: reduced precision on a CPU without native
    bf16 runs in fp32 (a speed choice of the machine, like GPU vs CPU kernels; the config and
    the stage keys stay as written)."""
    if torch.device(device).type == "cpu" and precision in ("bf16", "fp16") and not cpu_has_fast_bf16():
        _warn_once()
        return "no"
    return precision


_WARNED = []


def _warn_once() -> None:
    if not _WARNED:
        _WARNED.append(True)
        import warnings
        warnings.warn("this CPU has no native bf16 (AVX-512 BF16 / AMX): reduced-precision settings run in "
                      "fp32, which is many times faster here", RuntimeWarning, stacklevel=3)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a config precision ("no" | "bf16" | "fp16") on `device`; None: fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(effective_precision(device, precision))
    if device.type == "cpu" and dtype is torch.float16:
        dtype = torch.bfloat16  # fp16 autocast on CPU is slow; bf16 is the CPU's fast type
    return dtype


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """torch.autocast for a config precision, for loops that run outside an Accelerator."""
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def fresh_accelerator_state() -> None:
    """Forget the previous Accelerator's settings (the process group, if any, is kept).

    Accelerate keeps mixed precision and gradient accumulation in process-wide singletons and
    refuses a second Accelerator with other settings; stages run one after another in one process
    (`core run`, the lab's job slot), each with its own precision.
    """
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def make_accelerator(mixed_precision: str, grad_accum: int, project_dir: Path, seed: int,
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
        project_config=ProjectConfiguration(project_dir=str(project_dir)), log_with=log_with)
    set_seed(seed, device_specific=True)
    return accelerator


def tensorboard_if_installed() -> str | None:
    """TensorBoard through Accelerate's tracker only when the package is there (it is optional)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return "tensorboard"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, path), oldest first; hidden temp folders are never listed."""
    if not folder.exists():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


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


def clean_partial_checkpoints(folder: Path) -> list[Path]:
    """Remove temp folders a crash left behind (they were never renamed, so never complete)."""
    removed = []
    if folder.exists():
        for p in folder.glob(".checkpoint-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


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


def _unreadable(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded, from its safetensors headers (cheap: no tensor is read)."""
    from safetensors import safe_open
    for file in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: all mean unreadable
            return f"{file.relative_to(path)}: {type(e).__name__}: {e}"
    return None


def _quarantine(accelerator: Accelerator, path: Path, problem: str) -> None:
    import sys
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        target = path.with_name(f"{path.name}.corrupt")
        if target.exists():
            shutil.rmtree(target)
        os.replace(path, target)
        print(f"warning: skipped {path} ({problem}); kept as {target.name}", file=sys.stderr, flush=True)
    accelerator.wait_for_everyone()


def check_resume_compatible(ckpt_dir: Path, cfg, section: str, fields: tuple[str, ...]) -> None:
    """Refuse to resume checkpoints made by a different model shape (load_state would fail deep
    inside torch with a size mismatch); steps, logging and lr may change between runs."""
    import json
    saved_file = Workspace.lab_config_of(ckpt_dir)
    if not saved_file.exists() or latest_checkpoint(ckpt_dir) is None:
        return
    saved = json.loads(saved_file.read_text()).get(section, {})
    now = getattr(cfg, section)
    changed = [f for f in fields if f in saved and _plain(saved[f]) != _plain(getattr(now, f))]
    if changed:
        raise UserError(f"checkpoints in {ckpt_dir} were made with different {section}."
                        f"{', '.join(changed)}; rerun with --restart (or another workspace) to start over")


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def check_finite(accelerator: Accelerator, loss: torch.Tensor, step: int, ckpt_folder: Path) -> float:
    """Mean loss over ranks as a float, or TrainingDiverged naming the step (same verdict on every rank)."""
    value = float(accelerator.reduce(loss.detach().float(), reduction="mean"))
    if not math.isfinite(value):
        last = latest_checkpoint(ckpt_folder)
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
    from core.pools import pool_sampler_weights     # the data layer owns the pool-mixing rule
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

    def __init__(self, path: Path, accelerator: Accelerator, stage: str,
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
        if self.acc.is_main_process:
            append_jsonl(self.path, record)
            if self.acc.trackers:
                self.acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                             step=record.get("step"))

    def report(self, step: int, **extra) -> None:
        if self.progress is not None and self.acc.is_main_process:
            self.progress({"stage": self.stage, "step": step, "total": self.total, **extra})


def train_loop(accelerator: Accelerator, *, start: int, steps: int, step_fn: Callable[[int], torch.Tensor],
               ckpt_dir: Path, checkpoint_every: int, total_limit: int, stop=None,
               after_step: Callable[[int, float], None] | None = None) -> dict:
    """Run optimizer steps start..steps-1 with periodic checkpoints, NaN guard, stop and Ctrl-C.

    `step_fn(step)` does one optimizer step (all its micro-batches) and returns the loss.
    Stop event or KeyboardInterrupt: a checkpoint of the finished steps is written, then return.
    """
    step = start
    try:
        while step < steps:
            if stop is not None and stop.is_set():
                return _halt(accelerator, ckpt_dir, step, total_limit, "stopped")
            loss = step_fn(step)
            value = check_finite(accelerator, loss, step + 1, ckpt_dir)   # 1-based, like checkpoint names
            step += 1
            if step % checkpoint_every == 0 or step == steps:
                save_checkpoint(accelerator, ckpt_dir, step, total_limit)
            if after_step is not None:
                after_step(step, value)
    except KeyboardInterrupt:
        return _halt(accelerator, ckpt_dir, step, total_limit, "interrupted")
    return {"step": step, "stopped": False}


def _halt(accelerator: Accelerator, ckpt_dir: Path, step: int, total_limit: int, why: str) -> dict:
    last = latest_checkpoint(ckpt_dir)
    if step > 0 and (last is None or last[0] != step):
        save_checkpoint(accelerator, ckpt_dir, step, total_limit)
    return {"step": step, "stopped": True, "reason": why, "checkpoint": str(ckpt_dir / f"checkpoint-{step}")}
