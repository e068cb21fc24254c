"""Frozen configs: one `LabConfig` holds a sub-config per stage, and each stage reads only its own
(plus the data config where it needs image size or classes). Each field declares its allowed
values once (`spec`: range, choices; core.config.declare); a section's `validate()` checks them,
then the rules that span fields (`cross_checks`)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from core.config.declare import check_fields, spec
from core.errors import ConfigError

PRESETS = ("tiny", "demo", "paper")
PRECISIONS = ("no", "bf16", "fp16")     # autocast dtypes (core.precision)
SAVE_DTYPES = ("fp32", "fp16")
POSITIVE, FRACTION = "(0, inf)", "[0, 1]"
NORMS = ("pooled", "split", "recompute", "split_recompute", "group")     # core.train.normalization
REALISM_CHECKS = ("knn", "colour")     # selection.realism: the checks against the real class
ARMS = ("selected", "unselected", "pseudo", "selected+pseudo")         # core.protocol.arms


class Section:
    """A config section: `validate()` checks every field against its declaration, then the
    section's rules that span fields."""
    section: ClassVar[str] = ""

    def validate(self) -> None:
        check_fields(self, self.section or type(self).__name__)
        self.cross_checks()

    def cross_checks(self) -> None:
        """Rules between fields (one field's own rule is its declaration)."""


@dataclass(frozen=True)
class DataConfig(Section):
    section: ClassVar[str] = "data"
    image_size: int = spec(64, range=POSITIVE)   # pixels seen by the autoencoder and the classifiers
    mpp: float = spec(1.0, range=POSITIVE)       # target microns per pixel: every source is resampled to this scale
    # validation carved from labeled train (model selection only); it comes out of each budget
    # and must never outgrow what the run trains on
    val_fraction: float = spec(0.2, range="[0, 0.5]")
    test_fraction: float = spec(0.2, range="(0, 1)")   # carved (stratified) as test only when no test set is given
    seed: int = 0                   # also the seed of every label-budget subset (experiment.label_fractions)
    num_workers: int = 0
    # Your --labeled images outside the test set also feed pre-training, labels unused: images a
    # budget does not label are exactly the unlabeled data the method exploits, and pre-training
    # reads no label. Test images never do. Off: the pools are only what --unlabeled gives
    # (the demo: another slide only, the strict setting).
    pool_labeled_images: bool = True
    # an image file over this many pixels is skipped with its reason, from its header, before it
    # is decoded (a 20 KB PNG can unpack to gigabytes); slides are read by region and exempt
    max_image_pixels: int = spec(100_000_000, range=POSITIVE, key="if_set")


@dataclass(frozen=True)
class AutoencoderConfig(Section):
    section: ClassVar[str] = "autoencoder"
    # len-1 downsamplings: 3 blocks = factor 4
    block_out_channels: tuple[int, ...] = spec((32, 64, 64), range=POSITIVE)
    layers_per_block: int = spec(1, range=POSITIVE)
    latent_channels: int = spec(4, range=POSITIVE)
    steps: int = spec(1500, range=POSITIVE)
    batch_size: int = spec(32, range=POSITIVE)
    lr: float = spec(1e-3, range=POSITIVE)
    kl_weight: float = 1e-6
    disc_weight: float = 0.0        # > 0 turns on the patch discriminator (reference: 0.5 after disc_start)
    disc_start: int = 50001
    mixed_precision: str = spec("no", choices=PRECISIONS)
    seed: int = 0
    checkpoint_every: int = spec(250, range=POSITIVE)   # accelerator.save_state every N steps (resume after a kill)
    checkpoints_total_limit: int = spec(2, range=POSITIVE, key="never")   # kept on disk, newest first
    # inference overlap-tile (latent px of reflect padding, saved in the VAE config; the frame)
    encode_padding: int = spec(0, key="if_set")
    decode_padding: int = spec(0, key="if_set")
    stain_jitter: float = spec(0.0, range="[0, 1)", key="if_set")   # core.data.images.stain_jitter
    lr_schedule: str = spec("constant", key="if_set")   # a diffusers schedule
    # compiled training step (eager fallback); 2 CPU cores, demo shapes: 2.3x eager (benchmarks/train_step)
    compile: bool = spec(False, key="never")
    save_dtype: str = spec("fp32", choices=SAVE_DTYPES, key="if_set")   # as pretrain.save_dtype

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class PretrainConfig(Section):
    section: ClassVar[str] = "pretrain"
    block_out_channels: tuple[int, ...] = spec((64, 128, 128), range=POSITIVE)
    layers_per_block: int = 1
    # latent resolutions that get self-attention
    attention_resolutions: tuple[int, ...] = spec((8,), range=POSITIVE)
    attention_head_dim: int = spec(32, range=POSITIVE)
    resnet_time_scale_shift: str = "default"         # "scale_shift" as in the reference
    resblock_updown: bool = False                    # reference: resblock up/down
    num_train_timesteps: int = spec(1000, range=POSITIVE)
    beta_start: float = spec(0.0015, range="(0, 1)")
    beta_end: float = spec(0.0155, range="(0, 1)")
    beta_schedule: str = "linear"
    prediction_type: str = spec("epsilon", choices=("epsilon", "v_prediction"))
    loss: str = spec("l1", choices=("l1", "l2"))     # reference: L1
    steps: int = spec(3000, range=POSITIVE)
    batch_size: int = spec(64, range=POSITIVE)
    grad_accum: int = spec(1, range=POSITIVE)
    lr: float = spec(2e-4, range=POSITIVE)
    warmup_steps: int = 100
    weight_decay: float = 0.0
    mixed_precision: str = spec("bf16", choices=PRECISIONS)
    ema_decay: float = spec(0.999, range=FRACTION)
    checkpoint_every: int = spec(500, range=POSITIVE)
    checkpoints_total_limit: int = spec(2, range=POSITIVE)
    sample_every: int = spec(500, range=POSITIVE)
    log_every: int = spec(10, range=POSITIVE)
    seed: int = 0
    compile: bool = spec(False, key="never")   # speed only, as autoencoder.compile
    stain_jitter: float = spec(0.0, key="if_set")   # one per pool tile, cached
    # "fp16": the saved EMA UNet rounded to fp16 (half the bytes); every later stage loads just that
    save_dtype: str = spec("fp32", choices=SAVE_DTYPES, key="if_set")


@dataclass(frozen=True)
class LatentClassifierConfig(Section):
    section: ClassVar[str] = "latent_classifier"
    block_out_channels: tuple[int, ...] = spec((64, 128, 128), range=POSITIVE)
    layers_per_block: int = spec(1, range=POSITIVE)
    noise_aware: bool = True        # False reproduces the reference defect (trained at t = 0 only)
    steps: int = spec(2000, range=POSITIVE)
    batch_size: int = spec(64, range=POSITIVE)
    lr: float = spec(3e-4, range=POSITIVE)
    weight_decay: float = 0.05
    finetune_unet: bool = False     # optionally continue LDM training on the target latents
    finetune_steps: int = 500
    seed: int = 0
    # latent resolutions whose down blocks get attention
    attention_resolutions: tuple[int, ...] = spec((), range=POSITIVE)
    attention_head_dim: int = spec(8, range=POSITIVE)
    # "attention" (guided-diffusion's EncoderUNet) | "mean"
    pooling: str = spec("attention", choices=("attention", "mean"))
    mixed_precision: str = spec("bf16", choices=PRECISIONS)
    log_every: int = spec(10, range=POSITIVE)
    checkpoint_every: int = spec(500, range=POSITIVE)
    checkpoints_total_limit: int = spec(1, range=POSITIVE, key="never")   # also the UNet fine-tune's
    t_buckets: int = spec(10, range=POSITIVE)   # validation accuracy is reported per t-interval
    finetune_lr: float = spec(2e-5, range=POSITIVE)
    compile: bool = spec(False, key="never")   # also the UNet fine-tune's


def class_scale_fault(item: str) -> str | None:
    """What is wrong with one sampling.class_guidance_scales entry ("class=scale"), or None."""
    name, sep, value = str(item).rpartition("=")
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if not sep or not name or scale < 0:
        return f"entries must be CLASS=SCALE with SCALE >= 0, got {item!r}"
    return None


@dataclass(frozen=True)
class SamplingConfig(Section):
    section: ClassVar[str] = "sampling"
    sampler: str = spec("ddim", choices=("ddim", "ddpm"), was="scheduler")
    steps: int = spec(25, range=POSITIVE)
    eta: float = spec(1.0, range=FRACTION)     # reference: DDIM eta 1.0
    guidance_scale: float = 10.0
    # Every image has its own seeded generator, but batched kernels round differently: a seed
    # alone vs in a batch differs by up to 3/255 in bf16, 1/255 in fp32, so the batch is part
    # of the key. "if_set" with the demo bundle's 128 as default keeps its markers valid.
    batch_size: int = spec(128, range=POSITIVE, key="if_set")
    num_per_class: int = spec(64, range=POSITIVE)
    seed: int = 0
    mixed_precision: str = spec("bf16", choices=PRECISIONS)   # the UNet's autocast
    # the classifier's forward + backward for the guidance gradient; guided-diffusion runs it in
    # fp16 (--classifier_use_fp16). fp32 by default: its gradient is exact to ~1e-6 (bf16: ~2%).
    classifier_precision: str = spec("no", choices=PRECISIONS, key="if_set")
    # torch.compile UNet + classifier for datasets, not previews: 1.3-1.6x eager (benchmarks/guided_sampling)
    compile: bool = spec(False, key="never")
    latent_margin: int = spec(0, key="if_set")   # GuidedLatentPipeline margin
    # "class=scale" entries (`python -m core tune-guidance`) overriding guidance_scale for their class
    class_guidance_scales: tuple[str, ...] = spec((), check=class_scale_fault, key="if_set")
    # (t_lo, t_hi): the classifier guides only timesteps in [t_lo, t_hi] and is not run at the
    # others (Kynkaanniemi et al. 2024); () guides every timestep
    guidance_interval: tuple[int, ...] = spec((), key="if_set")

    def scale_for(self, class_name: str) -> float:
        """The guidance scale `class_name` is sampled at: its class_guidance_scales entry, else guidance_scale."""
        return self.class_scales().get(str(class_name), self.guidance_scale)

    def class_scales(self) -> dict[str, float]:
        out = {}
        for item in self.class_guidance_scales:
            fault = class_scale_fault(item)
            if fault:
                raise ConfigError(f"sampling.class_guidance_scales: {fault}")
            name, _, value = str(item).rpartition("=")
            out[name] = float(value)
        return out

    def cross_checks(self) -> None:
        if self.guidance_interval and (len(self.guidance_interval) != 2 or
                                       self.guidance_interval[0] > self.guidance_interval[1]):
            raise ConfigError(f"sampling.guidance_interval must be two timesteps LO,HI with LO <= HI (or empty: "
                              f"every timestep), got {list(self.guidance_interval)}")


@dataclass(frozen=True)
class SelectionConfig(Section):
    section: ClassVar[str] = "selection"
    # "threshold" (p(target) >= t) | "centroid" (paper's nearest centroid)
    strategy: str = spec("threshold", choices=("threshold", "centroid"))
    threshold: float = spec(0.9, range=FRACTION)
    quota_per_class: int = 0        # 0 = no quota
    # "validation": each class's threshold from the filter's confidence on the budget's real
    # validation images of that class (core.evaluate.selection.calibrate), never above `threshold`; "none":
    # `threshold` for every class. "if_set": older workspaces keep their stage markers and run keys.
    calibration: str = spec("none", choices=("none", "validation"), key="if_set")
    calibration_quantile: float = spec(0.1, range=FRACTION, key="if_set")
    # Checks against the class's real budget images on top of the rule (core.evaluate.judge):
    # "knn", inside the k-NN radius of one of them in the filter's feature space (Kynkaenniemi et
    # al.'s precision test); "colour", per-channel mean and pixel std inside their range. Saved
    # configs without the field selected on the rule alone (legacy), and keep their keys.
    realism: tuple[str, ...] = spec(REALISM_CHECKS, choices=REALISM_CHECKS, key="if_set", legacy=())

    def cross_checks(self) -> None:
        if len(set(self.realism)) != len(self.realism):
            raise ConfigError(f"selection.realism takes each check at most once, got {list(self.realism)}")
        if self.calibration != "none" and self.strategy != "threshold":
            raise ConfigError("selection.calibration=validation calibrates the confidence threshold; "
                              f"selection.strategy={self.strategy!r} uses none (set strategy=threshold)")


@dataclass(frozen=True)
class ImageClassifierConfig(Section):
    section: ClassVar[str] = "image_classifier"
    backbone: str = "resnet18"
    pretrained_path: str = ""       # optional local weights file; nothing is downloaded
    image_size: int = spec(64, range=POSITIVE)
    # Every classifier trains for `steps` optimizer steps whatever its data size ("steps"): a
    # 48-image set gets as many updates as a 4,800-image one, and the baseline and augmented arms
    # get equal compute, so a gain is data, not extra updates. "epochs" keeps fixed epochs instead.
    compute: str = spec("steps", choices=("steps", "epochs"), was="budget")
    steps: int = spec(300, range=POSITIVE)
    epochs: int = spec(15, range=POSITIVE)   # used when compute = "epochs"
    evals: int = spec(15, range=POSITIVE)    # validation checks per run; the best one's weights are kept
    batch_size: int = spec(64, range=POSITIVE)   # capped at the training set's size
    lr: float = spec(1e-3, range=POSITIVE)
    weight_decay: float = 0.05
    label_smoothing: float = spec(0.1, range="[0, 1)")
    mixed_precision: str = spec("bf16", choices=PRECISIONS)
    compile: bool = spec(False, key="never")   # every grid run compiles anew
    # Where BatchNorm statistics come from when a run adds images to its real ones
    # (core.train.normalization)
    norm: str = spec("pooled", choices=NORMS, key="if_set")
    # "light": flips, 90-degree turns, light colour jitter; "he": flips, 90-degree turns and HED
    # stain jitter of strength `stain_jitter` (core.data.augment)
    augment: str = spec("light", choices=("light", "he"), key="if_set")
    stain_jitter: float = spec(0.0, range="[0, 1)", key="if_set")
    # which weights are kept: "validation" (best validation balanced accuracy), "last" (the step
    # count, as the learning curve chose it), "auto" (validation when every class has at least
    # `min_val_per_class` validation images, else last: a step picked on 3 images is noise)
    model_selection: str = spec("validation", choices=("validation", "last", "auto"), key="if_set")
    min_val_per_class: int = spec(10, range=POSITIVE, key="if_set")


@dataclass(frozen=True)
class FilterClassifierConfig(ImageClassifierConfig):
    """The judge: scores synthetic images for selection; trained apart from every grid run."""
    section: ClassVar[str] = "filter_classifier"
    # Its own seed, none of experiment.seeds: with the seed of a grid run and the same settings it
    # would be that baseline run and accept what the baseline already gets right. Saved configs
    # without the field trained it with seed 0 ("legacy"), and keep their keys.
    seed: int = spec(1000, key="if_set", legacy=0)
    # k > 1: k members (seeds seed .. seed + k - 1); an image passes a check only when all agree
    members: int = spec(1, range="[1, inf)", key="if_set")

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.members)]


@dataclass(frozen=True)
class DownstreamConfig(ImageClassifierConfig):
    """The grid's classifiers: the baseline and the arms that add images to its real ones. Every
    arm of a seed trains on the baseline's real batches (core.train.batches); the defaults below
    are the options measured on the demo."""
    section: ClassVar[str] = "downstream"
    # split: the baseline keeps plain BatchNorm, an arm's added images never move the running
    # statistics. Recomputing them on the un-augmented real images cost the demo baselines at all
    # labels 6-7 points (seeds 0, 1: 0.832 / 0.837 against 0.890 / 0.909 pooled; AMD EPYC, 150 steps)
    norm: str = spec("split", choices=NORMS, key="if_set")
    augment: str = spec("he", choices=("light", "he"), key="if_set")
    stain_jitter: float = spec(0.2, range="[0, 1)", key="if_set")
    model_selection: str = spec("auto", choices=("validation", "last", "auto"), key="if_set")


def label_budget_fault(value: float) -> str | None:
    if 0 < value <= 1 or (value > 1 and float(value).is_integer()):
        return None
    return ("each must be a fraction in (0, 1] or a whole number of images per class (> 1), "
            f"got {value}")


@dataclass(frozen=True)
class ExperimentConfig(Section):
    section: ClassVar[str] = "experiment"
    # The label budgets: each value is what every model of its runs may label — a fraction of the
    # labeled pool (<= 1) or a whole number of images per class (> 1). One subset per budget,
    # drawn with data.seed and shared by all seeds; the first budget is the one the lab shows.
    label_fractions: tuple[float, ...] = spec((1.0,), range=POSITIVE, length="[1, inf)",
                                              check=label_budget_fault)
    synthetic_ratios: tuple[float, ...] = spec((1.0,), range=POSITIVE)
    seeds: tuple[int, ...] = spec((0, 1, 2), length="[1, inf)")
    topup_rounds: int = 2           # extra sampling rounds for a class short for the largest ratio
    bootstrap: int = spec(2000, range=POSITIVE)   # resamples of the test images for the paired bootstrap interval
    # the arms beside the baseline (core.protocol.arms): "selected" synthetic images; as many
    # "unselected" ones drawn from all generated; as many "pseudo"-labelled real images of the
    # labeled pool outside the budget; "selected+pseudo" both
    arms: tuple[str, ...] = spec(("selected",), choices=ARMS, key="if_set")
    # "BUDGET=N" entries (BUDGET as under budgets/: f0.1, n20): seeds 0..N-1 at that budget
    # instead of `seeds` (a small budget's runs are cheap and noisy: more seeds there)
    budget_seeds: tuple[str, ...] = spec((), key="if_set")

    def seeds_for(self, budget: str) -> tuple[int, ...]:
        """The seeds of a budget (by its name, as core.data.budget.budget_name gives it)."""
        for item in self.budget_seeds:
            name, sep, count = str(item).rpartition("=")
            if not sep or not name or not count.isdigit() or int(count) < 1:
                raise ConfigError(f"experiment.budget_seeds entries must be BUDGET=N with N >= 1 "
                                  f"(e.g. f0.1=12), got {item!r}")
            if name == budget:
                return tuple(range(int(count)))
        return self.seeds

    def cross_checks(self) -> None:
        self.seeds_for("")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"experiment.arms must name distinct arms, got {list(self.arms)}")


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
            if isinstance(sub, Section):
                sub.validate()
        if self.data.image_size % self.autoencoder.downsample_factor:
            raise ConfigError(
                f"data.image_size={self.data.image_size} is not divisible by the autoencoder's "
                f"downsampling factor {self.autoencoder.downsample_factor}")
        if self.sampling.guidance_interval and self.sampling.guidance_interval[1] >= self.pretrain.num_train_timesteps:
            raise ConfigError(f"sampling.guidance_interval {list(self.sampling.guidance_interval)} reaches past the "
                              f"last timestep {self.pretrain.num_train_timesteps - 1} (pretrain.num_train_timesteps)")
        unet_factor = 2 ** (len(self.pretrain.block_out_channels) - 1)
        if self.latent_size % unet_factor:
            raise ConfigError(
                f"latent size {self.latent_size} is not divisible by the UNet's downsampling "
                f"factor {unet_factor} (pretrain.block_out_channels)")
        return self
