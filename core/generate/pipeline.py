"""`GuidedLatentPipeline`: class-guided sampling in latent space, as a diffusers pipeline.

A `DiffusionPipeline` over the unconditional UNet, the autoencoder, the training scheduler and
the noise-aware latent classifier, saved and loaded as one folder (model_index.json + vae/,
unet/, scheduler/, latent_classifier/) with `save_pretrained` / `from_pretrained`; a workspace's
`models/` is such a folder. diffusers has no classifier guidance, so the denoising loop is
written here; everything else (schedulers, noise draws, loading, callbacks) is diffusers'.
Each image has its own CPU `torch.Generator`, so any image can be regenerated alone from its seed.

How a pipeline runs (`PipelineSettings`) is fixed when it is made: a pipeline handed out is never
reconfigured, and `with_settings` makes another one over the same frozen modules.

    pipe = GuidedLatentPipeline.from_pretrained("WORKSPACE/models", mixed_precision="bf16")
    pipe(class_ids=[0], generator=[torch.Generator().manual_seed(0)], guidance_scale=3.0).images
"""
from __future__ import annotations

import dataclasses
import numbers
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from core.data.images import to_pil
from core.errors import UserError
from core.generate.guidance import (check_interval, check_scale, condition_mean, condition_score, ddpm_variance,
                                   scale_at)
from core.io import folder_hash
from core.models.autoencoder import decode
from core.models.compile import CompiledOrEager, compilable
from core.models.latent_classifier import LatentClassifier
from core.models.unet import prefers_channels_last
from core.precision import autocast, autocast_dtype
from core.workspace import Workspace

SAMPLERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
PRECISIONS = ("no", "bf16", "fp16")
OUTPUT_TYPES = ("pil", "latent", "pt", "np")
COMPONENTS = ("unet", "vae", "scheduler", "latent_classifier")


@dataclass(frozen=True)
class PipelineSettings:
    """How the pipeline runs, not what it is: fixed when a pipeline is made, never saved with the
    models. The defaults run as the weights were saved (fp32, eager).

    mixed_precision: the UNet's autocast ("no" | "bf16" | "fp16"); classifier_precision: the
    guidance gradient's; compile: `torch.compile` the UNet and classifier (~10-40 s per batch
    shape, then faster: for datasets, not a 4-image preview); sampler: "ddim" | "ddpm";
    margin: latent px sampled around each tile and cropped off after decoding (overlap-tile on
    the UNet's side: its zero padding paints an inset square on flat tiles)."""
    mixed_precision: str = "no"
    classifier_precision: str = "no"
    compile: bool = False
    sampler: str = "ddim"
    margin: int = 0

    def __post_init__(self):
        for name, allowed in (("mixed_precision", PRECISIONS), ("classifier_precision", PRECISIONS),
                              ("sampler", tuple(SAMPLERS))):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.margin, bool) or int(self.margin) != self.margin or self.margin < 0:
            raise UserError(f"margin must be a whole number of latent pixels >= 0, got {self.margin!r}")
        object.__setattr__(self, "margin", int(self.margin))
        object.__setattr__(self, "compile", bool(self.compile))


SETTINGS = tuple(f.name for f in dataclasses.fields(PipelineSettings))


@dataclass
class GuidedOutput(BaseOutput):
    images: list | torch.Tensor      # PIL images; latents (N, C, h, w) for "latent"; [0, 1] tensors/arrays
    seeds: list[int]                 # the seeds of the images returned (a generator's initial_seed)
    interrupted: bool                # stopped before the end: `images` is then empty
    # the models that made them, as the manifests name them (unet_hash, vae_hash, classifier_hash)
    model_hashes: dict


def component_hashes(folders: dict) -> dict[str, str]:
    """The manifests' model columns from component folders (classifier_hash: the latent classifier's)."""
    return {"unet_hash": folder_hash(folders["unet"]), "vae_hash": folder_hash(folders["vae"]),
            "classifier_hash": folder_hash(folders["latent_classifier"])}


class GuidedLatentPipeline(DiffusionPipeline):
    """Unconditional latent UNet + classifier guidance toward per-image class ids."""

    model_cpu_offload_seq = "latent_classifier->unet->vae"
    # "denoised" is the step's x0 prediction, named as diffusers' LCM pipeline names it
    _callback_tensor_inputs = ["latents", "denoised"]

    def __init__(self, unet: UNet2DModel, vae: AutoencoderKL, scheduler: DDPMScheduler,
                 latent_classifier: LatentClassifier, mixed_precision="no", classifier_precision="no",
                 compile=False, sampler="ddim", margin=0, model_hashes=None):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, latent_classifier=latent_classifier)
        self.image_processor = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1))
        self._settings = PipelineSettings(mixed_precision, classifier_precision, compile, sampler, margin)
        self._model_hashes = dict(model_hashes or {})
        # what one call sets and its callbacks read (diffusers' `pipe._interrupt`), per thread:
        # the app may sample with one pipeline from several threads
        self._call_state = threading.local()
        self._compiled_modules, self._compile_lock = {}, threading.Lock()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "GuidedLatentPipeline":
        """diffusers' loader (components may be overridden: `latent_classifier=...`, `unet=...`),
        with the settings among kwargs (mixed_precision, classifier_precision, compile, sampler,
        margin). `model_hashes` defaults to the hashes of the folder's component weights."""
        folder = Path(str(pretrained_model_name_or_path))
        if "model_hashes" not in kwargs and folder.is_dir() and not set(kwargs) & set(COMPONENTS):
            kwargs["model_hashes"] = component_hashes({name: folder / name for name in COMPONENTS})
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        # Sampling never updates weights: frozen, the classifier's backward computes only
        # d log p / d z and its graph holds no weight edges.
        for module in (pipe.unet, pipe.vae, pipe.latent_classifier):
            module.requires_grad_(False)
        return pipe

    def with_settings(self, **changes) -> "GuidedLatentPipeline":
        """A new pipeline over the same modules with some settings changed; this one stays as it is."""
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise TypeError(f"unknown pipeline setting(s): {', '.join(sorted(unknown))}")
        settings = dataclasses.replace(self._settings, **changes)
        pipe = type(self)(**self.components, **dataclasses.asdict(settings), model_hashes=self._model_hashes)
        pipe.register_to_config(_name_or_path=self.name_or_path)
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @property
    def settings(self) -> PipelineSettings:
        return self._settings

    @property
    def mixed_precision(self) -> str:
        return self._settings.mixed_precision

    @property
    def classifier_precision(self) -> str:
        return self._settings.classifier_precision

    @property
    def compile(self) -> bool:
        return self._settings.compile

    @property
    def sampler(self) -> str:
        return self._settings.sampler

    @property
    def margin(self) -> int:
        return self._settings.margin

    @property
    def model_hashes(self) -> dict[str, str]:
        """The models this pipeline samples with, as the manifests name them (a copy)."""
        return dict(self._model_hashes)

    # diffusers' pipeline properties: callbacks read them, and set `pipe._interrupt = True` to stop
    @property
    def _interrupt(self) -> bool:
        return getattr(self._call_state, "interrupt", False)

    @_interrupt.setter
    def _interrupt(self, value: bool) -> None:
        self._call_state.interrupt = bool(value)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def num_timesteps(self) -> int:
        return getattr(self._call_state, "num_timesteps", 0)

    @property
    def guidance_scale(self) -> float:
        return getattr(self._call_state, "guidance_scale", 0.0)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names -> class ids, as diffusers' DiTPipeline maps its ImageNet labels."""
        names = list(self.latent_classifier.config.class_names)
        labels = [label] if isinstance(label, str) else list(label)
        unknown = [name for name in labels if name not in names]
        if unknown:
            raise UserError(f"unknown class {unknown[0]!r}; the latent classifier knows: {', '.join(names)}")
        return [names.index(name) for name in labels]

    def sampling_scheduler(self) -> DDIMScheduler | DDPMScheduler:
        """A fresh scheduler of the configured kind from the training scheduler's config (fresh:
        set_timesteps changes it, and threads share a cached pipeline)."""
        # Latents are not confined to [-1, 1]; clipping x0 there (DDPM's default) distorts them.
        return SAMPLERS[self.sampler].from_config(self.scheduler.config, clip_sample=False)

    def compiled(self, name: str) -> CompiledOrEager:
        """The `torch.compile`d unet / classifier, built once per pipeline (see `PipelineSettings`;
        benchmarks/guided_sampling.py measures it)."""
        with self._compile_lock:
            if name not in self._compiled_modules:
                # Sampling never updates the UNet's weights: inductor's freezing folds them into the
                # graph as constants (oneDNN pre-packs the conv weights on CPU). The classifier is
                # differentiated every step, and freezing covers inference graphs only.
                options = {"freezing": True} if name == "unet" else None
                self._compiled_modules[name] = CompiledOrEager(compilable(getattr(self, name)), options=options)
            return self._compiled_modules[name]

    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """Scaled latents -> PIL images, or [0, 1] images as "pt" tensors / "np" arrays. A latent
        wider than the UNet's tiles is a sampling canvas: decoded whole, its centre tile is kept."""
        with torch.no_grad(), autocast(latents.device, self.mixed_precision):
            images = decode(self.vae, latents).float()
        extra = (latents.shape[-1] - self.unet.config.sample_size) // 2
        if extra > 0:
            crop = extra * self.image_processor.config.vae_scale_factor
            images = images[..., crop:-crop, crop:-crop]
        if output_type == "pil":
            return to_pil(images)        # the rounding every saved PNG was made with
        return self.image_processor.postprocess(images, output_type=output_type)

    def _noise_generators(self, generator, seeds, count: int | None) -> tuple[list, list[int]]:
        if generator is not None and seeds is not None:
            raise UserError("pass generator or seeds, not both")
        if generator is not None:
            gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
            return gens, [int(g.initial_seed()) for g in gens]
        if seeds is None:   # as diffusers without a generator: fresh noise, but its seeds are returned
            seeds = torch.randint(0, 2 ** 31 - 1, (count or 1,)).tolist()
        seeds = [int(s) for s in seeds]
        return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds

    def _tensor_inputs(self, callback, tensor_inputs) -> list[str]:
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
        tensor_inputs = list(tensor_inputs or ["latents"])
        if set(tensor_inputs) - set(self._callback_tensor_inputs):
            raise UserError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                            f"got {tensor_inputs}")
        return tensor_inputs

    @torch.no_grad()
    def __call__(self, class_ids: int | list[int], generator: torch.Generator | list[torch.Generator] | None = None,
                 seeds: list[int] | None = None, guidance_scale: float = 10.0, num_inference_steps: int = 25,
                 eta: float = 1.0, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None,
                 guidance_interval: tuple[int, int] | None = None) -> GuidedOutput | tuple:
        """Sample one image per generator (or seed) guided toward its class id (an int: all alike).

        guidance_interval=(t_lo, t_hi): the classifier guides only the steps whose timestep lies
        in [t_lo, t_hi] and is not run at the others (None: every step).

        callback_on_step_end(pipe, i, t, tensors) runs after every step with the tensors named in
        callback_on_step_end_tensor_inputs ("latents", "denoised": the x0 prediction) and returns
        them (a returned "latents" replaces the latents); it stops sampling by setting
        `pipe._interrupt = True`, and then no image is returned (`interrupted` says so).

        Returns:
            `GuidedOutput` (images, seeds, interrupted, model_hashes), or that tuple without return_dict.
        """
        class_ids = class_ids.tolist() if torch.is_tensor(class_ids) else class_ids
        one = isinstance(class_ids, numbers.Integral)
        gens, seeds = self._noise_generators(generator, seeds, None if one else len(class_ids))
        ids = [int(class_ids)] * len(seeds) if one else [int(c) for c in class_ids]
        if len(ids) != len(seeds):
            raise UserError(f"got {len(ids)} class ids for {len(seeds)} seeds")
        scale, interval = check_scale(guidance_scale), check_interval(guidance_interval)
        if int(num_inference_steps) < 1:
            raise UserError(f"steps must be >= 1, got {num_inference_steps}")
        if eta < 0:
            raise UserError(f"eta must be >= 0, got {eta}")
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        tensor_inputs = self._tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        sched = self.sampling_scheduler()
        sched.set_timesteps(int(num_inference_steps))
        state = self._call_state
        state.interrupt, state.num_timesteps, state.guidance_scale = False, len(sched.timesteps), scale
        latents = self._denoise(sched, gens, torch.tensor(ids, device=self.unet.device), scale, interval, eta,
                                callback_on_step_end, tensor_inputs)
        if self.interrupt:   # a half-denoised batch is no image: none is returned
            images, seeds = ([] if output_type == "pil" else latents[:0]), []
        else:
            images = latents if output_type == "latent" else self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        out = GuidedOutput(images=images, seeds=seeds, interrupted=self.interrupt, model_hashes=self.model_hashes)
        return out if return_dict else out.to_tuple()

    def _denoise(self, sched, gens: list, y: torch.Tensor, scale: float, interval, eta: float, callback,
                 tensor_inputs: list[str]) -> torch.Tensor:
        device = self.unet.device
        cls_dtype = autocast_dtype(device, self.classifier_precision)
        channels_last = prefers_channels_last(device, self.mixed_precision)
        unet, classifier = (self.compiled("unet"), self.compiled("latent_classifier")) if self.compile \
            else (self.unet, self.latent_classifier)
        side = self.unet.config.sample_size + 2 * self.margin     # the canvas; decode keeps its centre
        shape = (self.unet.config.in_channels, side, side)
        latents = randn_tensor((len(gens), *shape), generator=gens, device=device, dtype=torch.float32)
        latents = latents * sched.init_noise_sigma
        with self.progress_bar(total=len(sched.timesteps)) as bar:
            for i, t in enumerate(sched.timesteps):
                # channels_last is the tensor-core layout on CUDA; on CPU bf16 group norm took 2.2 ms
                # per call on it against 0.3 ms in NCHW (batch 64), half of sampling's time.
                z_in = latents.contiguous(memory_format=torch.channels_last) if channels_last else latents
                with autocast(device, self.mixed_precision):
                    eps = unet(z_in, t).sample.float()
                step_scale = scale_at(t, scale, interval)
                if self.sampler == "ddim":
                    eps = condition_score(eps, latents, t, sched, classifier, y, step_scale, cls_dtype)
                    out = sched.step(eps, t, latents, eta=eta, generator=gens)
                    next_latents = out.prev_sample
                else:
                    out = sched.step(eps, t, latents, generator=gens)
                    next_latents = condition_mean(out.prev_sample, ddpm_variance(sched, t), latents, t,
                                                  classifier, y, step_scale, cls_dtype)
                latents, denoised = next_latents, out.pred_original_sample
                if callback is not None:
                    tensors = {"latents": latents, "denoised": denoised}
                    returned = callback(self, i, t, {k: tensors[k] for k in tensor_inputs}) or {}
                    latents = returned.pop("latents", latents)
                bar.update()
                if self.interrupt:
                    break
        return latents

    def save_pretrained(self, save_directory, workspace=None, **kwargs) -> None:
        """diffusers' save (model_index.json + one folder per component), then a model card
        (README.md) from `workspace` (default: the one this pipeline was loaded from)."""
        from core.generate.model_card import write_model_card
        super().save_pretrained(save_directory, **kwargs)
        write_model_card(save_directory, workspace or _workspace_of(self.name_or_path))


def _workspace_of(folder):
    """The workspace whose models/ folder this is, if it is one."""
    folder = Path(str(folder or ""))
    if folder.name == "models" and Workspace(folder.parent, migrate=False).config_file.exists():
        return Workspace(folder.parent, migrate=False)
    return None


def interrupt_when(stop: threading.Event | None, then: Callable | None = None) -> Callable | None:
    """A callback_on_step_end that interrupts the pipeline once `stop` is set, after `then` (a
    callback_on_step_end too) has seen the step: the app's Stop button, `core run`'s stop."""
    if stop is None:
        return then

    def callback(pipe: GuidedLatentPipeline, i: int, t, tensors: dict) -> dict:
        tensors = then(pipe, i, t, tensors) if then is not None else tensors
        if stop.is_set():
            pipe._interrupt = True
        return tensors
    return callback
