"""Frozen configs and `--set key=value` overrides: one `LabConfig` holds a sub-config per stage, and
each stage reads only its own (plus the data config where it needs image size or classes)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from core.errors import ConfigError
from core.config.checks import check_fields

PRESETS = ("tiny", "demo", "paper")
REALISM_CHECKS = ("knn", "colour")     # selection.realism: the checks against the real class


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 64            # pixels seen by the autoencoder and the classifiers
    mpp: float = 1.0                # target microns per pixel: every source is resampled to this scale
    val_fraction: float = 0.2       # validation carved from labeled train (model selection only)
    test_fraction: float = 0.2      # carved (stratified) as test only when no test set is given
    seed: int = 0                   # also the seed of every label-budget subset (experiment.label_fractions)
    num_workers: int = 0
    # Your --labeled images outside the test set also feed pre-training, labels unused: images a
    # budget does not label are exactly the unlabeled data the method exploits, and pre-training
    # reads no label. Test images never do. (The bundled demo pre-trains on other slides only.)
    pool_labeled_images: bool = True

    def validate(self) -> None:
        _positive(self, "image_size", "mpp")
        if not 0 <= self.val_fraction <= 0.5:
            # validation comes out of each budget and must never outgrow what the run trains on
            raise ConfigError(f"data.val_fraction must be in [0, 0.5], got {self.val_fraction}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class AutoencoderConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)   # len-1 downsamplings: 3 blocks = factor 4
    layers_per_block: int = 1
    latent_channels: int = 4
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    disc_weight: float = 0.0        # > 0 turns on the patch discriminator (reference: 0.5 after disc_start)
    disc_start: int = 50001
    mixed_precision: str = "no"     # "no" | "bf16" | "fp16"
    seed: int = 0
    checkpoint_every: int = 250     # accelerator.save_state every N steps (resume after a kill)
    checkpoints_total_limit: int = field(default=2, metadata={"key": "never"})   # kept on disk, newest first
    # inference overlap-tile (latent px of reflect padding, saved in the VAE config; the frame)
    encode_padding: int = field(default=0, metadata={"key": "if_set"})
    decode_padding: int = field(default=0, metadata={"key": "if_set"})
    stain_jitter: float = field(default=0.0, metadata={"key": "if_set"})   # core.data.images.stain_jitter
    lr_schedule: str = field(default="constant", metadata={"key": "if_set"})   # a diffusers schedule
    # compiled training step (eager fallback); 2 CPU cores, demo shapes: 2.3x eager (benchmarks/train_step)
    compile: bool = field(default=False, metadata={"key": "never"})
    save_dtype: str = field(default="fp32", metadata={"key": "if_set"})   # as pretrain.save_dtype

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        _positive(self, "steps", "batch_size", "lr", "latent_channels", "layers_per_block",
                  "checkpoint_every")
        _precision(self, "mixed_precision")
        if min(self.encode_padding, self.decode_padding) < 0 or not 0 <= self.stain_jitter < 1:
            raise ConfigError(f"autoencoder: encode_padding {self.encode_padding} and decode_padding "
                              f"{self.decode_padding} must be >= 0, stain_jitter {self.stain_jitter} in [0, 1)")
        if self.save_dtype not in ("fp32", "fp16"):
            raise ConfigError(f"autoencoder.save_dtype must be 'fp32' or 'fp16', got {self.save_dtype!r}")


@dataclass(frozen=True)
class PretrainConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_resolutions: tuple[int, ...] = (8,)   # latent resolutions that get self-attention
    attention_head_dim: int = 32
    resnet_time_scale_shift: str = "default"         # "scale_shift" as in the reference
    resblock_updown: bool = False                    # reference: resblock up/down
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0155
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    loss: str = "l1"                                 # reference: L1
    steps: int = 3000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    mixed_precision: str = "bf16"
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2
    sample_every: int = 500
    log_every: int = 10
    seed: int = 0
    compile: bool = field(default=False, metadata={"key": "never"})   # speed only, as autoencoder.compile
    stain_jitter: float = field(default=0.0, metadata={"key": "if_set"})   # one per pool tile, cached
    # "fp16": the saved EMA UNet rounded to fp16 (half the bytes); every later stage loads just that
    save_dtype: str = field(default="fp32", metadata={"key": "if_set"})

    def validate(self) -> None:
        _positive(self, "steps", "batch_size", "grad_accum", "lr", "num_train_timesteps",
                  "checkpoint_every", "sample_every", "log_every", "checkpoints_total_limit")
        _precision(self, "mixed_precision")
        if self.loss not in ("l1", "l2") or self.save_dtype not in ("fp32", "fp16"):
            raise ConfigError(f"pretrain.loss must be 'l1' or 'l2' (got {self.loss!r}) and "
                              f"pretrain.save_dtype 'fp32' or 'fp16' (got {self.save_dtype!r})")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"pretrain.prediction_type must be epsilon|v_prediction, got {self.prediction_type!r}")


@dataclass(frozen=True)
class LatentClassifierConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    noise_aware: bool = True        # False reproduces the reference defect (trained at t = 0 only)
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    finetune_unet: bool = False     # optionally continue LDM training on the target latents
    finetune_steps: int = 500
    seed: int = 0
    attention_resolutions: tuple[int, ...] = ()   # latent resolutions whose down blocks get attention
    attention_head_dim: int = 8
    pooling: str = "attention"      # "attention" (guided-diffusion's EncoderUNet) | "mean"
    mixed_precision: str = "bf16"
    log_every: int = 10
    checkpoint_every: int = 500
    checkpoints_total_limit: int = field(default=1, metadata={"key": "never"})   # also the UNet fine-tune's
    t_buckets: int = 10             # validation accuracy is reported per t-interval
    finetune_lr: float = 2e-5
    compile: bool = field(default=False, metadata={"key": "never"})   # also the UNet fine-tune's

    def validate(self) -> None:
        _positive(self, "steps", "batch_size", "lr", "layers_per_block", "attention_head_dim",
                  "log_every", "checkpoint_every", "t_buckets", "finetune_lr")
        _precision(self, "mixed_precision")
        if self.pooling not in ("attention", "mean"):
            raise ConfigError(f"latent_classifier.pooling must be attention|mean, got {self.pooling!r}")


@dataclass(frozen=True)
class SamplingConfig:
    sampler: str = field(default="ddim", metadata={"was": "scheduler"})   # "ddim" | "ddpm"
    steps: int = 25
    eta: float = 1.0                # reference: DDIM eta 1.0
    guidance_scale: float = 10.0
    # Every image has its own seeded generator, but batched kernels round differently: a seed
    # alone vs in a batch differs by up to 3/255 in bf16, 1/255 in fp32 (issue 14), so the batch
    # is part of the key. "if_set" with the demo bundle's 128 as default keeps its markers valid.
    batch_size: int = field(default=128, metadata={"key": "if_set"})
    num_per_class: int = 64
    seed: int = 0
    mixed_precision: str = "bf16"   # the UNet's autocast
    # the classifier's forward + backward for the guidance gradient; guided-diffusion runs it in
    # fp16 (--classifier_use_fp16). fp32 by default: its gradient is exact to ~1e-6 (bf16: ~2%).
    classifier_precision: str = field(default="no", metadata={"key": "if_set"})
    # torch.compile UNet + classifier for datasets, not previews: 1.3-1.6x eager (benchmarks/guided_sampling)
    compile: bool = field(default=False, metadata={"key": "never"})
    latent_margin: int = field(default=0, metadata={"key": "if_set"})   # GuidedLatentPipeline margin
    # "class=scale" entries (`python -m core tune-guidance`) overriding guidance_scale for their class
    class_guidance_scales: tuple[str, ...] = field(default=(), metadata={"key": "if_set"})

    def scale_for(self, class_name: str) -> float:
        """The guidance scale `class_name` is sampled at: its class_guidance_scales entry, else guidance_scale."""
        return self.class_scales().get(str(class_name), self.guidance_scale)

    def class_scales(self) -> dict[str, float]:
        out = {}
        for item in self.class_guidance_scales:
            name, sep, value = str(item).rpartition("=")
            try:
                scale = float(value)
            except ValueError:
                scale = -1.0
            if not sep or not name or scale < 0:
                raise ConfigError(f"sampling.class_guidance_scales entries must be CLASS=SCALE with "
                                  f"SCALE >= 0, got {item!r}")
            out[name] = scale
        return out

    def validate(self) -> None:
        _positive(self, "steps", "batch_size", "num_per_class")
        if self.guidance_scale < 0:
            raise ConfigError(f"sampling.guidance_scale must be >= 0, got {self.guidance_scale}")
        self.class_scales()
        if self.sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"sampling.sampler must be ddim|ddpm, got {self.sampler!r}")
        if self.eta < 0:
            raise ConfigError(f"sampling.eta must be >= 0, got {self.eta}")
        _precision(self, "mixed_precision")
        _precision(self, "classifier_precision")


@dataclass(frozen=True)
class SelectionConfig:
    strategy: str = "threshold"     # "threshold" (p(target) >= t) | "centroid" (paper's nearest centroid)
    threshold: float = 0.9
    quota_per_class: int = 0        # 0 = no quota
    # "validation": each class's threshold from the filter's confidence on the budget's real
    # validation images of that class (core.evaluate.selection.calibrate), never above `threshold`; "none":
    # `threshold` for every class. "if_set": older workspaces keep their stage markers and run keys.
    calibration: str = field(default="none", metadata={"key": "if_set"})
    calibration_quantile: float = field(default=0.1, metadata={"key": "if_set"})
    # Checks against the class's real budget images on top of the rule (core.evaluate.realism):
    # "knn", inside the k-NN radius of one of them in the filter's feature space (Kynkaenniemi et
    # al.'s precision test); "colour", per-channel mean and pixel std inside their range. Saved
    # configs without the field selected on the rule alone ("legacy"), and keep their keys.
    realism: tuple[str, ...] = field(default=REALISM_CHECKS, metadata={"key": "if_set", "legacy": ()})

    def validate(self) -> None:
        if self.strategy not in ("threshold", "centroid"):
            raise ConfigError(f"selection.strategy must be threshold|centroid, got {self.strategy!r}")
        unknown = [c for c in self.realism if c not in REALISM_CHECKS]
        if unknown or len(set(self.realism)) != len(self.realism):
            raise ConfigError(f"selection.realism takes each of {'|'.join(REALISM_CHECKS)} at most once, "
                              f"got {list(self.realism)}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"selection.threshold must be in [0, 1], got {self.threshold}")
        if self.calibration not in ("none", "validation"):
            raise ConfigError(f"selection.calibration must be none|validation, got {self.calibration!r}")
        if self.calibration != "none" and self.strategy != "threshold":
            raise ConfigError("selection.calibration=validation calibrates the confidence threshold; "
                              f"selection.strategy={self.strategy!r} uses none (set strategy=threshold)")


@dataclass(frozen=True)
class ImageClassifierConfig:
    backbone: str = "resnet18"
    pretrained_path: str = ""       # optional local weights file; nothing is downloaded
    image_size: int = 64
    # Every classifier trains for `steps` optimizer steps whatever its data size ("steps"): a
    # 48-image set gets as many updates as a 4,800-image one, and the baseline and augmented arms
    # get equal compute, so a gain is data, not extra updates. "epochs" keeps fixed epochs instead.
    compute: str = field(default="steps", metadata={"was": "budget"})
    steps: int = 300
    epochs: int = 15                # used when compute = "epochs"
    evals: int = 15                 # validation checks per run; the best one's weights are kept
    batch_size: int = 64            # capped at the training set's size
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixed_precision: str = "bf16"
    compile: bool = field(default=False, metadata={"key": "never"})   # every grid run compiles anew

    def validate(self) -> None:
        _positive(self, "steps", "epochs", "evals", "batch_size", "lr", "image_size")
        _precision(self, "mixed_precision")
        if self.compute not in ("steps", "epochs"):
            raise ConfigError(f"{_section_name(self)}.compute must be steps|epochs, got {self.compute!r}")


@dataclass(frozen=True)
class FilterClassifierConfig(ImageClassifierConfig):
    """The judge: scores synthetic images for selection; trained apart from every grid run."""
    section: ClassVar[str] = "filter_classifier"
    # Its own seed, none of experiment.seeds: with the seed of a grid run and the same settings it
    # would be that baseline run and accept what the baseline already gets right. Saved configs
    # without the field trained it with seed 0 ("legacy"), and keep their keys.
    seed: int = field(default=1000, metadata={"key": "if_set", "legacy": 0})
    # k > 1: k members (seeds seed .. seed + k - 1); an image passes a check only when all agree
    members: int = field(default=1, metadata={"key": "if_set"})

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.members)]

    def validate(self) -> None:
        super().validate()
        _positive(self, "members")


@dataclass(frozen=True)
class DownstreamConfig(ImageClassifierConfig):
    """The grid's classifiers: the baseline and augmented arms."""
    section: ClassVar[str] = "downstream"


@dataclass(frozen=True)
class ExperimentConfig:
    # The label budgets: each value is what every model of its runs may label — a fraction of the
    # labeled pool (<= 1) or a whole number of images per class (> 1). One subset per budget,
    # drawn with data.seed and shared by all seeds; the first budget is the one the lab shows.
    label_fractions: tuple[float, ...] = (1.0,)
    synthetic_ratios: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0, 1, 2)
    topup_rounds: int = 2           # extra sampling rounds for a class short for the largest ratio
    bootstrap: int = 2000           # resamples of the test images for the paired bootstrap interval

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("experiment.seeds must name at least one seed")
        if not self.label_fractions:
            raise ConfigError("experiment.label_fractions must name at least one budget")
        for r in self.synthetic_ratios:
            if r <= 0:
                raise ConfigError(f"experiment.synthetic_ratios must be > 0, got {r}")
        for f in self.label_fractions:
            if not (0 < f <= 1 or (f > 1 and float(f).is_integer())):
                raise ConfigError("experiment.label_fractions: each must be a fraction in (0, 1] or a "
                                  f"whole number of images per class (> 1), got {f}")
        if self.topup_rounds < 0:
            raise ConfigError(f"experiment.topup_rounds must be >= 0, got {self.topup_rounds}")
        _positive(self, "bootstrap")


@dataclass(frozen=True)
class LabConfig:
    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    latent_classifier: LatentClassifierConfig = field(default_factory=LatentClassifierConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    filter_classifier: FilterClassifierConfig = field(default_factory=FilterClassifierConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    @property
    def latent_size(self) -> int:
        return self.data.image_size // self.autoencoder.downsample_factor

    def validate(self) -> "LabConfig":
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for f in fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                check_fields(sub, f.name)      # types and ranges first: validate() compares values
                sub.validate()
        if self.data.image_size % self.autoencoder.downsample_factor:
            raise ConfigError(
                f"data.image_size={self.data.image_size} is not divisible by the autoencoder's "
                f"downsampling factor {self.autoencoder.downsample_factor}")
        unet_factor = 2 ** (len(self.pretrain.block_out_channels) - 1)
        if self.latent_size % unet_factor:
            raise ConfigError(
                f"latent size {self.latent_size} is not divisible by the UNet's downsampling "
                f"factor {unet_factor} (pretrain.block_out_channels)")
        return self


def _positive(cfg: Any, *names: str) -> None:
    section = _section_name(cfg)
    for name in names:
        value = getattr(cfg, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value}")


def _precision(cfg: Any, name: str) -> None:
    value = getattr(cfg, name)
    if value not in ("no", "bf16", "fp16"):
        raise ConfigError(f"{_section_name(cfg)}.{name} must be no|bf16|fp16, got {value!r}")


def _section_name(cfg: Any) -> str:
    for f in fields(LabConfig):
        if f.default_factory is not dataclasses.MISSING and isinstance(cfg, f.default_factory):  # type: ignore[arg-type]
            return f.name
    return type(cfg).__name__
