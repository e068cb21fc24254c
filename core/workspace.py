"""Where every stage reads and writes inside a workspace folder (the one layout all stages share)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    # data built or indexed by core.data
    @property
    def data_dir(self) -> Path: return self.root / "data"
    @property
    def labeled_dir(self) -> Path: return self.data_dir / "labeled"        # {train,val,test}/CLASS/*.png
    @property
    def unlabeled_dir(self) -> Path: return self.data_dir / "unlabeled"    # POOL/*.png
    @property
    def split_manifest(self) -> Path: return self.data_dir / "splits.csv"  # path,class,split

    # models, each in diffusers save_pretrained layout (safetensors + config.json)
    @property
    def models_dir(self) -> Path: return self.root / "models"
    @property
    def autoencoder_dir(self) -> Path: return self.models_dir / "autoencoder"
    @property
    def unet_dir(self) -> Path: return self.models_dir / "unet"
    @property
    def scheduler_dir(self) -> Path: return self.models_dir / "scheduler"
    @property
    def latent_classifier_dir(self) -> Path: return self.models_dir / "latent_classifier"
    @property
    def finetuned_unet_dir(self) -> Path: return self.models_dir / "unet_finetuned"   # classifier.finetune_unet
    @property
    def filter_classifier_dir(self) -> Path: return self.models_dir / "filter_classifier"

    # training state
    @property
    def cache_dir(self) -> Path: return self.root / "cache"
    @property
    def checkpoints_dir(self) -> Path: return self.root / "checkpoints"
    @property
    def metrics_dir(self) -> Path: return self.root / "metrics"           # STAGE.jsonl, read live by the UI
    @property
    def samples_dir(self) -> Path: return self.root / "samples"           # pretrain sample grids

    # synthetic data and results
    @property
    def synthetic_dir(self) -> Path: return self.root / "synthetic"       # CLASS/*.png + manifest.csv
    @property
    def accepted_dir(self) -> Path: return self.root / "accepted"         # ImageFolder + manifest.csv
    @property
    def results_dir(self) -> Path: return self.root / "results"           # runs.csv, summary.json
    @property
    def stages_dir(self) -> Path: return self.root / "stages"             # STAGE.done markers (config hash)

    def feature_cache(self, key: str) -> Path:   # core.features: image features by content hash
        return self.cache_dir / f"features-{key}.safetensors"

    @property
    def synthetic_manifest(self) -> Path: return self.synthetic_dir / "manifest.csv"
    @property
    def synthetic_scores(self) -> Path: return self.synthetic_dir / "scores.csv"
    @property
    def quality_csv(self) -> Path: return self.results_dir / "quality.csv"          # core.quality
    @property
    def guidance_sweep_csv(self) -> Path: return self.results_dir / "guidance_sweep.csv"  # core.tune
    @property
    def quality_images_csv(self) -> Path: return self.results_dir / "quality_images.csv"  # nearest real per image

    def metrics_file(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.jsonl"

    def ensure(self) -> "Workspace":
        self.root.mkdir(parents=True, exist_ok=True)
        return self
