"""Class-guided sampling in latent space: the pipeline, dataset generation streamed to disk, `python -m core sample`.

`GuidedLatentPipeline` is a diffusers `DiffusionPipeline` over the unconditional UNet, the
autoencoder, the training scheduler and the noise-aware latent classifier. diffusers has no
classifier guidance, so the denoising loop is written here; everything else (schedulers, noise
draws, model loading) is diffusers'. Each image has its own CPU `torch.Generator`, so any image
can be regenerated alone from its seed.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from core import cli as cli_util
from core.cli import UserError
from core.config import LabConfig, save_config
from core.guidance import check_scale, condition_mean, condition_score, ddpm_variance
from core.images import to_pil
from core.io import folder_hash, save_png
from core.latent_classifier import LatentClassifier, load_latent_classifier, load_scheduler_checked
from core.pretrain import prefers_channels_last
from core.training import autocast, autocast_dtype
from core.workspace import Workspace

STAGE = "sample"
SEED_STRIDE = 1_000_000   # dataset seeds: seed + label * stride + k, so classes never share initial noise
MANIFEST_COLUMNS = ["file", "class", "label", "seed", "guidance_scale", "steps", "scheduler", "eta",
                    "unet_hash", "vae_hash", "classifier_hash"]


@dataclass
class GuidedOutput(BaseOutput):
    images: list | torch.Tensor      # PIL images, or latents (N, C, h, w) for output_type="latent"
    seeds: list[int]
    interrupted: bool


class GuidedLatentPipeline(DiffusionPipeline):
    """Unconditional latent UNet + classifier guidance toward per-image class ids."""

    def __init__(self, unet: UNet2DModel, vae: AutoencoderKL, scheduler: DDPMScheduler,
                 classifier: LatentClassifier):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, classifier=classifier)

    def sampling_scheduler(self, kind: str):
        """A fresh DDIM/DDPM scheduler from the training scheduler's config (fresh: thread-safe)."""
        if kind == "ddim":
            # Latents are not confined to [-1, 1]; clipping x0 there (DDPM's default) distorts them.
            return DDIMScheduler.from_config(self.scheduler.config, clip_sample=False)
        if kind == "ddpm":
            return DDPMScheduler.from_config(self.scheduler.config, clip_sample=False)
        raise UserError(f"scheduler must be 'ddim' or 'ddpm', got {kind!r}")

    def compiled(self, name: str) -> "CompiledOrEager":
        """The `torch.compile`d unet / classifier, built once per pipeline (compiling happens on the
        first call per batch shape: ~10-40 s on CPU, then every step is faster; see
        benchmarks/guided_sampling.py). Worth it for datasets, not for a 4-image preview."""
        cache = self.__dict__.setdefault("_compiled_modules", {})
        if name not in cache:
            # Sampling never updates the UNet's weights: inductor's freezing folds them into the
            # graph as constants (oneDNN pre-packs the conv weights on CPU). The classifier is
            # differentiated every step, and freezing covers inference graphs only.
            options = {"freezing": True} if name == "unet" else None
            cache[name] = CompiledOrEager(_compilable(getattr(self, name)), options=options)
        return cache[name]

    def decode(self, latents: torch.Tensor, mixed_precision: str = "no") -> list:
        vae_cfg = self.vae.config
        z = latents / vae_cfg.scaling_factor + (getattr(vae_cfg, "shift_factor", None) or 0.0)
        with torch.no_grad(), autocast(z.device, mixed_precision):
            images = self.vae.decode(z.to(self.vae.device)).sample
        return to_pil(images.float())

    @torch.no_grad()
    def __call__(self, class_ids: list[int] | int, seeds: list[int], guidance_scale: float = 10.0,
                 num_inference_steps: int = 25, eta: float = 1.0, scheduler: str = "ddim",
                 callback: Callable | None = None, stop: threading.Event | None = None,
                 output_type: str = "pil", batch_size: int = 32, mixed_precision: str = "bf16",
                 classifier_precision: str = "no", compile: bool = False) -> GuidedOutput:
        seeds = [int(s) for s in seeds]
        ids = [int(class_ids)] * len(seeds) if isinstance(class_ids, int) else [int(c) for c in class_ids]
        if len(ids) != len(seeds):
            raise UserError(f"got {len(ids)} class ids for {len(seeds)} seeds")
        scale = check_scale(guidance_scale)
        if int(num_inference_steps) < 1:
            raise UserError(f"steps must be >= 1, got {num_inference_steps}")
        if eta < 0:
            raise UserError(f"eta must be >= 0, got {eta}")
        sched = self.sampling_scheduler(scheduler)
        sched.set_timesteps(int(num_inference_steps))
        wants_x0 = callback is not None and "x0" in inspect.signature(callback).parameters
        cls_dtype = autocast_dtype(self.unet.device, classifier_precision)
        device = self.unet.device
        channels_last = prefers_channels_last(device, mixed_precision)
        unet, classifier = (self.compiled("unet"), self.compiled("classifier")) if compile \
            else (self.unet, self.classifier)
        shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        total, done, outputs, interrupted = len(sched.timesteps) * _ceil_div(len(seeds), batch_size), 0, [], False
        for lo in range(0, len(seeds), batch_size):
            chunk = seeds[lo:lo + batch_size]
            gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
            y = torch.tensor(ids[lo:lo + batch_size], device=device)
            z = randn_tensor((len(chunk), *shape), generator=gens, device=device, dtype=torch.float32)
            z = z * sched.init_noise_sigma
            for t in sched.timesteps:
                # channels_last is the tensor-core layout on CUDA; on CPU bf16 group norm took 2.2 ms
                # per call on it against 0.3 ms in NCHW (batch 64; issue 4), half of sampling's time.
                z_in = z.contiguous(memory_format=torch.channels_last) if channels_last else z
                with autocast(device, mixed_precision):
                    eps = unet(z_in, t).sample.float()
                if scheduler == "ddim":
                    eps = condition_score(eps, z, t, sched, classifier, y, scale, cls_dtype)
                    out = sched.step(eps, t, z, eta=eta, generator=gens)
                    z_next = out.prev_sample
                else:
                    out = sched.step(eps, t, z, generator=gens)
                    z_next = condition_mean(out.prev_sample, ddpm_variance(sched, t), z, t, classifier,
                                            y, scale, cls_dtype)
                z, done = z_next, done + 1
                if callback is not None:
                    extra = {"x0": out.pred_original_sample} if wants_x0 else {}
                    if callback(done, total, z, **extra) is False:
                        interrupted = True
                if stop is not None and stop.is_set():
                    interrupted = True
                if interrupted:
                    break
            if interrupted:
                break
            outputs.append(z if output_type == "latent" else self.decode(z, mixed_precision))
        finished = seeds[:sum(len(o) for o in outputs)]
        if output_type == "latent":
            images = torch.cat(outputs) if outputs else torch.zeros((0, *shape))
        else:
            images = [im for batch in outputs for im in batch]
        return GuidedOutput(images=images, seeds=finished, interrupted=interrupted)


class CompiledOrEager:
    """`torch.compile(module)` that falls back to the eager module, once and with a warning, when
    compiling fails (no C++ compiler for inductor on CPU, an op it cannot trace): compiling is a
    speed setting, never a reason to lose a sampling run. Errors of the call itself (bad shapes)
    still raise, from the eager module."""

    def __init__(self, module: torch.nn.Module, options: dict | None = None):
        self.module, self.failed = module, None
        self.compiled = torch.compile(module, dynamic=False, options=options)

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compile failure means "run eagerly"
                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                warnings.warn(f"torch.compile of {type(self.module).__name__} failed ({self.failed}); "
                              "running it eagerly", RuntimeWarning, stacklevel=2)
        return self.module(*args, **kwargs)


def _compilable(module: torch.nn.Module) -> torch.nn.Module:
    """On CPU, a copy whose attention layers use `ShortSequenceAttnProcessor`. A copy, so the
    eager module the app previews with keeps its processors. On CUDA the module is used as is."""
    if module.device.type != "cpu":
        return module
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, Attention):
            layer.set_processor(ShortSequenceAttnProcessor())
    return module


class ShortSequenceAttnProcessor:
    """diffusers' classic processor (bmm + softmax, which inductor fuses) for short sequences,
    SDPA for long ones. On CPU the SDPA flash kernel is slow at the demo's shapes (8-dim heads on
    16-64 tokens): compiled, the classic one made the UNet forward ~4% and the classifier's
    forward + backward 5-15% faster (issue 4, 5 interleaved rounds each). It holds the whole
    attention matrix (batch x heads x N^2), so past MAX_TOKENS SDPA stays."""

    MAX_TOKENS = 256

    def __init__(self):
        self.classic, self.sdpa = AttnProcessor(), AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None) -> torch.Tensor:
        # the keyword names are diffusers' processor signature: Attention.forward inspects them
        shape = hidden_states.shape
        tokens = shape[2] * shape[3] if hidden_states.ndim == 4 else shape[1]
        processor = self.classic if tokens <= self.MAX_TOKENS else self.sdpa
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---- loading ---------------------------------------------------------------------------------

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def unet_dir(ws: Workspace, cfg: LabConfig) -> Path:
    """The fine-tuned UNet when classifier.finetune_unet is on and it exists, else the pre-trained one."""
    if cfg.classifier.finetune_unet and (ws.finetuned_unet_dir / "config.json").exists():
        return ws.finetuned_unet_dir
    return ws.unet_dir


def check_models(ws: Workspace, cfg: LabConfig) -> None:
    missing = [f"{name} ({path})" for name, path, marker, how in [
        ("autoencoder", ws.autoencoder_dir, "config.json", "autoencoder"),
        ("diffusion UNet", unet_dir(ws, cfg), "config.json", "pretrain"),
        ("scheduler", ws.scheduler_dir, "scheduler_config.json", "pretrain"),
        ("latent classifier", ws.latent_classifier_dir, "config.json", "classifier")]
        if not (path / marker).exists()]
    if missing:
        raise UserError(f"workspace {ws.root} has no trained " + ", ".join(missing)
                        + " — train them first (python -m core autoencoder / pretrain / classifier, or run)")


def load_pipeline(ws: Workspace, cfg: LabConfig, device: str | torch.device | None = None) -> GuidedLatentPipeline:
    """Load (once; cached until a model folder changes) the pipeline; `pipe.model_hashes` names its models."""
    check_models(ws, cfg)
    folders = {"unet": unet_dir(ws, cfg), "vae": ws.autoencoder_dir, "classifier": ws.latent_classifier_dir,
               "scheduler": ws.scheduler_dir}
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stamp = tuple((str(p), max((f.stat().st_mtime_ns for f in p.iterdir()), default=0)) for p in folders.values())
    key = (str(ws.root), stamp, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            unet = UNet2DModel.from_pretrained(folders["unet"]).eval()
            # Sampling never needs weight gradients: frozen, the classifier's backward computes
            # only d log p / d z and its graph holds no weight edges.
            classifier = load_latent_classifier(ws).requires_grad_(False)
            pipe = GuidedLatentPipeline(
                unet=unet.to(device, memory_format=torch.channels_last if prefers_channels_last(device, "bf16")
                             else torch.contiguous_format).requires_grad_(False),
                vae=AutoencoderKL.from_pretrained(folders["vae"]).eval().to(device).requires_grad_(False),
                scheduler=load_scheduler_checked(ws),
                classifier=classifier.to(device))
            pipe.model_hashes = {f"{k}_hash": folder_hash(folders[k]) for k in ("unet", "vae", "classifier")}
            _CACHE.clear()  # one pipeline in memory at a time
            _CACHE[key] = pipe
        return _CACHE[key]


def class_index(pipe: GuidedLatentPipeline, class_name: str) -> int:
    names = list(pipe.classifier.config.class_names)
    if class_name not in names:
        raise UserError(f"unknown class {class_name!r}; the latent classifier knows: {', '.join(names)}")
    return names.index(class_name)


# ---- UI convenience ---------------------------------------------------------------------------

def sample_images(ws: Workspace, cfg: LabConfig, class_name: str, seeds: list[int], guidance_scale: float,
                  steps: int, eta: float, callback: Callable | None = None, preview_every: int = 0,
                  stop: threading.Event | None = None, scheduler: str | None = None) -> list:
    """PIL images for `seeds`; callback(step, total, preview) gets decoded x0 predictions every
    `preview_every` steps (None otherwise) and may return False to interrupt."""
    pipe = load_pipeline(ws, cfg)
    label, s = class_index(pipe, class_name), cfg.sampling

    def relay(step: int, total: int, latents: torch.Tensor, x0: torch.Tensor):
        if callback is None:
            return None
        show = preview_every > 0 and (step % preview_every == 0 or step == total)
        return callback(step, total, pipe.decode(x0, s.mixed_precision) if show else None)

    # never compiled: a preview of a few images would wait ~30 s for it (SamplingConfig.compile)
    out = pipe(label, seeds, guidance_scale, steps, eta, scheduler or s.scheduler, callback=relay, stop=stop,
               batch_size=s.batch_size, mixed_precision=s.mixed_precision,
               classifier_precision=s.classifier_precision)
    return out.images


# ---- datasets on disk -------------------------------------------------------------------------

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


def generate(ws: Workspace, cfg: LabConfig, class_name: str, num: int, seed: int, guidance_scale=None,
             steps=None, eta=None, out_dir=None, progress=None, stop=None, seeds: list[int] | None = None,
             scheduler: str | None = None) -> list[dict]:
    """Generate `num` images of `class_name` with seeds seed..seed+num-1 into out_dir/CLASS/, streamed
    in batches; seeds already in the manifest with the same parameters are skipped (resume). Under
    `accelerate launch` / torchrun each process takes seeds[rank::world]. Returns the manifest rows."""
    from accelerate import PartialState
    s = cfg.sampling
    scale = check_scale(s.scale_for(class_name) if guidance_scale is None else guidance_scale)
    steps = int(s.steps if steps is None else steps)
    eta = float(s.eta if eta is None else eta)
    kind = scheduler or s.scheduler
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if num < 1 and seeds is None:
        raise UserError(f"num must be >= 1, got {num}")
    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True torchrun on CPU is not seen
    pipe = load_pipeline(ws, cfg, state.device)
    label = class_index(pipe, class_name)
    root = Path(out_dir) if out_dir else ws.synthetic_dir
    manifest = root / "manifest.csv"
    seeds = list(seeds) if seeds is not None else [seed + k for k in range(num)]
    params = {"class": class_name, "label": label, "guidance_scale": scale, "steps": steps, "scheduler": kind,
              "eta": eta, **pipe.model_hashes}

    def name(sd: int) -> str:
        return f"{class_name}/{class_name}-seed{sd}-s{scale:g}.png"
    if state.is_main_process:
        _ensure_header(manifest)
    state.wait_for_everyone()
    done = _done_files(manifest, root, params)
    todo = [sd for sd in seeds[state.process_index::state.num_processes] if name(sd) not in done]
    for lo in range(0, len(todo), s.batch_size):
        if stop is not None and stop.is_set():
            break
        batch = todo[lo:lo + s.batch_size]
        out = pipe(label, batch, scale, steps, eta, kind, stop=stop, batch_size=s.batch_size,
                   mixed_precision=s.mixed_precision, classifier_precision=s.classifier_precision,
                   compile=s.compile)
        rows = []
        for sd, image in zip(out.seeds, out.images):
            row = {"file": name(sd), "seed": sd, **params}
            save_png(image, root / row["file"], row)   # image first: a manifest row always has its file
            rows.append(row)
        _append_rows(manifest, rows)
        if progress:
            progress({"stage": STAGE, "class": class_name, "step": min(lo + len(batch), len(todo)),
                      "total": len(todo)})
    state.wait_for_everyone()
    wanted = {name(sd) for sd in seeds}
    frame = read_manifest(manifest)
    return frame[frame["file"].isin(wanted)].to_dict("records")


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
    classes = list(pipe.classifier.config.class_names)
    save_config(cfg, ws.synthetic_dir)
    for label, class_name in enumerate(classes):
        if stop is not None and stop.is_set():
            break
        base = s.seed + label * SEED_STRIDE
        rows += generate(ws, cfg, class_name, s.num_per_class, base, progress=progress, stop=stop)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


@cli_util.guarded
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core sample", description="class-guided latent sampling")
    cli_util.add_common(parser)
    parser.add_argument("--class", dest="class_name", default=None,
                        help="class to generate (default: every class, sampling.num_per_class each)")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--scheduler", choices=("ddim", "ddpm"), default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: WORKSPACE/synthetic)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the models (= --set sampling.compile=true): 10-40 s to start, "
                             "then faster per image; for hundreds of images, not a handful")
    args = parser.parse_args(argv)
    cfg, ws = cli_util.resolve_config(args), cli_util.workspace(args)
    if args.compile:
        cfg = replace(cfg, sampling=replace(cfg.sampling, compile=True))
    if args.class_name is None:
        with cli_util.ProgressReporter() as progress:
            frame = generate_dataset(ws, cfg, progress=progress)
        print(f"{len(frame)} images in {ws.synthetic_dir}")
        return 0
    with cli_util.ProgressReporter() as progress:
        rows = generate(ws, cfg, args.class_name, args.num or cfg.sampling.num_per_class,
                        cfg.sampling.seed if args.seed is None else args.seed, args.guidance_scale, args.steps,
                        args.eta, args.out, progress=progress, scheduler=args.scheduler)
    print(f"{len(rows)} images of {args.class_name} in {args.out or ws.synthetic_dir}")
    return 0
