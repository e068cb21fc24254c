"""Images from the guided pipeline: `sample_seeds` (one class from seeds, in batches: the
batching rule every caller shares), `generate_images` (one class streamed to disk, resumable,
split over processes), `generate_dataset` (every class) and their manifest. The pipeline itself
is `core.generate.pipeline.GuidedLatentPipeline`, loaded by `core.generate.loading.load_pipeline`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch

from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.store import save_config
from core.generate.guidance import check_interval, check_scale
from core.io import folder_hash, save_png
from core.models.load import sampling_unet_dir
from core.generate.loading import load_pipeline
from core.generate.pipeline import interrupt_when
from core.workspace import Workspace

STAGE = "sample"
SEED_STRIDE = 1_000_000   # dataset seeds: seed + label * stride + k, so classes never share initial noise
MANIFEST_COLUMNS = ["file", "class", "label", "seed", "guidance_scale", "steps", "scheduler", "eta",
                    "unet_hash", "vae_hash", "classifier_hash"]


def read_manifest(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    frame = pd.read_csv(path, on_bad_lines="skip")
    return frame.drop_duplicates("file", keep="last")  # a re-made file keeps its latest parameters


def _append_rows(path: Path, rows: list[dict]) -> None:
    """Append CSV rows in one write call (O_APPEND): concurrent processes never interleave a row."""
    text = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(index=False, header=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _ensure_header(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        from core.io import atomic_write_text
        atomic_write_text(path, ",".join(MANIFEST_COLUMNS) + "\n")


class ClassSampler:
    """Images of one class from seeds, in batches: the one batching rule shared by the dataset
    stage, `python -m core sample` and the app. Its parameters (None: cfg.sampling's) are fixed
    at construction; `params` is what made the images (the manifest's columns)."""

    def __init__(self, ws: Workspace, cfg: LabConfig, class_name: str, guidance_scale=None, steps=None, eta=None,
                 sampler: str | None = None, compile: bool | None = None, device=None, guidance_interval=None):
        s = cfg.sampling
        scale = check_scale(s.scale_for(class_name) if guidance_scale is None else guidance_scale)
        self.interval = check_interval(s.guidance_interval if guidance_interval is None else guidance_interval)
        steps = int(s.steps if steps is None else steps)
        eta = float(s.eta if eta is None else eta)
        if steps < 1:
            raise UserError(f"steps must be >= 1, got {steps}")
        if eta < 0:
            raise UserError(f"eta must be >= 0, got {eta}")
        settings = {"sampler": sampler or s.sampler, **({} if compile is None else {"compile": bool(compile)})}
        self.pipe = load_pipeline(ws, cfg, device, **settings)
        self.class_name, self.batch_size = class_name, s.batch_size
        label = self.pipe.get_label_ids(class_name)[0]
        self.params = {"class": class_name, "label": label, "guidance_scale": scale, "steps": steps,
                       "scheduler": self.pipe.sampler, "eta": eta, **self.pipe.model_hashes}
        if self.pipe.margin:
            self.params["latent_margin"] = self.pipe.margin      # in the PNG text; the file name says it too
        if self.interval is not None:
            self.params["guidance_interval"] = list(self.interval)   # so does the guidance interval

    def __call__(self, seeds: list[int], batch_size: int | None = None, progress=None, stop=None,
                 preview_every: int = 0) -> Iterator[SampledBatch]:
        """Yield a `SampledBatch` per `batch_size` seeds (default sampling.batch_size): batched
        kernels round differently, so the same chunks give the same pixels. A batch stopped
        half-way (`stop` set) is not yielded. `progress` gets {"stage", "class", "step", "total",
        "message"} after every denoising step (step and total count image-steps), with "preview"
        (decoded x0 predictions) every `preview_every` steps and at the last."""
        seeds, size = [int(sd) for sd in seeds], int(batch_size or self.batch_size)
        if size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        steps, total = self.params["steps"], self.params["steps"] * len(seeds)
        for lo in range(0, len(seeds), size):
            if stop is not None and stop.is_set():
                return
            batch = seeds[lo:lo + size]

            def relay(pipe, i: int, t, tensors: dict, lo=lo, n=len(batch)) -> dict:
                if progress is not None:
                    info = {"stage": STAGE, "class": self.class_name, "step": lo * steps + n * (i + 1),
                            "total": total, "message": f"images {lo + 1}-{lo + n} of {len(seeds)}: "
                                                       f"step {i + 1}/{steps}"}
                    if preview_every > 0 and ((i + 1) % preview_every == 0 or i + 1 == steps):
                        info["preview"] = pipe.decode(tensors["denoised"])
                    progress(info)
                return tensors
            out = self.pipe(self.params["label"], seeds=batch, guidance_scale=self.params["guidance_scale"],
                            num_inference_steps=steps, eta=self.params["eta"], guidance_interval=self.interval,
                            callback_on_step_end=interrupt_when(stop, relay),
                            callback_on_step_end_tensor_inputs=["denoised"])
            if out.interrupted:
                return
            yield SampledBatch(out.seeds, out.images, {**self.params, **out.model_hashes})


@dataclass
class SampledBatch:
    """Images sampled together: their seeds, the PIL images, and what made them (manifest columns)."""
    seeds: list[int]
    images: list
    params: dict


def sample_seeds(ws: Workspace, cfg: LabConfig, class_name: str, seeds: list[int], guidance_scale=None,
                 steps=None, eta=None, batch_size: int | None = None, progress=None, stop=None,
                 sampler: str | None = None, compile: bool | None = None, preview_every: int = 0,
                 guidance_interval: tuple[int, int] | None = None) -> Iterator[SampledBatch]:
    """Sample `seeds` of `class_name` in batches (see `ClassSampler`; None: cfg.sampling's value).

    Args:
        seeds: one image per seed, each from its own generator (regenerable from its seed and batch).
        batch_size: seeds sampled together (default sampling.batch_size).
        progress: called after every denoising step (see `ClassSampler.__call__`).
        stop: a threading.Event; once set, sampling ends within a step and the unfinished batch is dropped.
        compile: torch.compile the models (default sampling.compile): for datasets, not previews.
        guidance_interval: (t_lo, t_hi), guidance only at timesteps inside; () every timestep
            (default sampling.guidance_interval).

    Returns:
        An iterator of `SampledBatch`, one per batch, as each finishes (bad input raises at the call).
    """
    class_sampler = ClassSampler(ws, cfg, class_name, guidance_scale, steps, eta, sampler, compile,
                                 guidance_interval=guidance_interval)
    return class_sampler(seeds, batch_size, progress, stop, preview_every)


def generate_images(ws: Workspace, cfg: LabConfig, class_name: str, num: int, seed: int, guidance_scale=None,
                    steps=None, eta=None, out_dir=None, progress=None, stop=None, seeds: list[int] | None = None,
                    sampler: str | None = None, guidance_interval: tuple[int, int] | None = None) -> list[dict]:
    """Generate `num` images of `class_name` with seeds seed..seed+num-1 into out_dir/CLASS/, streamed
    in batches; seeds already in the manifest with the same parameters are skipped (resume). Under
    `accelerate launch` / torchrun each process takes seeds[rank::world]. Returns the manifest rows."""
    from accelerate import PartialState
    if num < 1 and seeds is None:
        raise UserError(f"num must be >= 1, got {num}")
    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True torchrun on CPU is not seen
    class_sampler = ClassSampler(ws, cfg, class_name, guidance_scale, steps, eta, sampler, device=state.device,
                                 guidance_interval=guidance_interval)
    params, scale = class_sampler.params, class_sampler.params["guidance_scale"]
    root = Path(out_dir) if out_dir else ws.synthetic_dir
    manifest = Workspace.manifest_of(root)
    seeds = list(seeds) if seeds is not None else [seed + k for k in range(num)]
    # another guidance interval or canvas: other pixels, another file
    suffix = interval_suffix(class_sampler.interval) + canvas_suffix(class_sampler.pipe.margin)

    def name(sd: int) -> str:
        return f"{class_name}/{class_name}-seed{sd}-s{scale:g}{suffix}.png"
    if state.is_main_process:
        _ensure_header(manifest)
    state.wait_for_everyone()
    done = _done_files(manifest, root, params)
    todo = [sd for sd in seeds[state.process_index::state.num_processes] if name(sd) not in done]
    made = 0
    for batch in class_sampler(todo, stop=stop):
        rows = []
        for sd, image in zip(batch.seeds, batch.images):
            row = {"file": name(sd), "seed": sd, **batch.params}
            save_png(image, root / row["file"], row)   # image first: a manifest row always has its file
            rows.append(row)
        _append_rows(manifest, rows)
        made += len(rows)
        if progress:
            progress({"stage": STAGE, "class": class_name, "step": made, "total": len(todo)})
    state.wait_for_everyone()
    wanted = {name(sd) for sd in seeds}
    frame = read_manifest(manifest)
    return frame[frame["file"].isin(wanted)].to_dict("records")


def interval_suffix(interval: tuple[int, int] | None) -> str:
    """What a guidance interval adds to an image's file name (before a canvas suffix)."""
    return f"-i{interval[0]}-{interval[1]}" if interval else ""


def guidance_intervals(files: pd.Series) -> pd.Series:
    """The guidance interval each file name says ("LO-HI"; "" for every timestep)."""
    return files.astype(str).str.extract(r"-i(\d+-\d+)(?:-m\d+)?\.png$", expand=False).fillna("")


def canvas_suffix(margin: int) -> str:
    """What a sampling canvas margin (pipeline `margin`) adds to an image's file name."""
    return f"-m{margin}" if margin else ""


def canvas_margin(files: pd.Series) -> pd.Series:
    """The canvas margin each file name says (canvas_suffix read back; 0 without one)."""
    return files.astype(str).str.extract(r"-m(\d+)\.png$", expand=False).fillna("0").astype(int)


def _done_files(manifest: Path, root: Path, params: dict) -> set[str]:
    frame = read_manifest(manifest)
    if frame.empty:
        return set()
    same = pd.Series(True, index=frame.index)
    for key in ("steps", "scheduler", "unet_hash", "vae_hash", "classifier_hash"):
        same &= frame[key].astype(str) == str(params[key])
    same &= (frame["eta"].astype(float) - params["eta"]).abs() < 1e-9
    return {f for f in frame.loc[same, "file"] if (root / f).exists()}


def generate_dataset(ws: Workspace, cfg: LabConfig, progress=None, stop=None) -> pd.DataFrame:
    """cfg.sampling.num_per_class images per class into ws.synthetic_dir (resumable); the manifest frame."""
    pipe = load_pipeline(ws, cfg)
    s, rows = cfg.sampling, []
    classes = list(pipe.latent_classifier.config.class_names)
    save_config(cfg, ws.synthetic_dir)
    for label, class_name in enumerate(classes):
        if stop is not None and stop.is_set():
            break
        base = s.seed + label * SEED_STRIDE
        rows += generate_images(ws, cfg, class_name, s.num_per_class, base, progress=progress, stop=stop)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def made_by_config(ws: Workspace, cfg: LabConfig, frame: pd.DataFrame, topup: bool = True) -> pd.Series:
    """Which rows of a synthetic manifest / scores table are images that `cfg` made for this budget:
    its guidance scale and interval, steps, scheduler, eta, canvas margin, the budget's current models, its
    seeds — the sampling stage's num_per_class per class and, with `topup`, the experiment's top-up
    rounds."""
    s = cfg.sampling
    wanted = {"guidance_scale": s.guidance_scale, "steps": s.steps, "scheduler": s.sampler, "eta": s.eta,
              "unet_hash": folder_hash(sampling_unet_dir(ws, cfg)), "vae_hash": folder_hash(ws.autoencoder_dir),
              "classifier_hash": folder_hash(ws.latent_classifier_dir)}
    mask = pd.Series(True, index=frame.index)
    if s.class_guidance_scales and "class" in frame:   # per-class scales (tune-guidance) win
        wanted.pop("guidance_scale")
        scale = frame["class"].astype(str).map(s.class_scales()).fillna(s.guidance_scale)
        mask &= (pd.to_numeric(frame["guidance_scale"], errors="coerce") - scale).abs() < 1e-9
    for col, value in wanted.items():
        if col in frame:
            mask &= (pd.to_numeric(frame[col], errors="coerce") - value).abs() < 1e-9 if isinstance(value, float) \
                else frame[col].astype(str) == str(value)
    if "file" in frame:     # the canvas and the guidance interval are in the name only (generate_images)
        mask &= canvas_margin(frame["file"]) == s.latent_margin
        mask &= guidance_intervals(frame["file"]) == "-".join(str(t) for t in s.guidance_interval)
    if {"seed", "label"} <= set(frame.columns):
        k = pd.to_numeric(frame["seed"], errors="coerce") - pd.to_numeric(frame["label"], errors="coerce") \
            * SEED_STRIDE - s.seed
        rounds = 1 + (cfg.experiment.topup_rounds if topup else 0)
        mask &= (k >= 0) & (k < s.num_per_class * rounds)
    return mask
