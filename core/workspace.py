"""Where every stage reads and writes inside a workspace folder (the one layout all stages share).

A workspace can hold several label budgets (experiment.label_fractions). Everything trained or
made from labels — the latent classifier, the filter classifier, the synthetic set, its scores and
accepted images, their checkpoints, metrics and stage markers — belongs to one budget and lives
under `label_root`: the workspace root for the config's first budget (the one the lab shows), or
`budgets/NAME/` for the others. Shared, label-free things (data, autoencoder, UNet, latent cache,
results) always live at the root.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from core.errors import WorkspaceBusy

LAB_CONFIG = "lab_config.json"   # the LabConfig beside a model; diffusers owns config.json in model folders
# Model folders of older layouts, and their names now: the root `models/` is a diffusers pipeline
# folder, whose component folders must carry the names in its model_index.json (`classifier` was
# the latent classifier's component name before one term per concept).
LEGACY_MODEL_DIRS = {"autoencoder": "vae", "classifier": "latent_classifier"}
# trainers' metrics and checkpoint names before one term per concept
LEGACY_STAGE_NAMES = {"classifier": "latent_classifier", "classifier-finetune": "unet_finetune"}
_CHECKED: set[Path] = set()      # roots whose layout this process has already migrated


@dataclass(frozen=True)
class Workspace:
    root: Path
    scope: str = ""      # "" = the root holds this view's label budget; else budgets/<scope>/

    def __init__(self, root: str | Path, scope: str = "", migrate: bool = True):
        """`migrate=False` reads a folder in a workspace's layout without renaming older folder
        names in it (a bundle, someone else's models folder): opening must not write there."""
        object.__setattr__(self, "root", Path(root).expanduser().resolve())
        object.__setattr__(self, "scope", scope)
        if migrate and self.root not in _CHECKED and self.root.is_dir():
            migrate_layout(self.root)
            _CHECKED.add(self.root)

    def for_budget(self, name: str, primary: bool) -> "Workspace":
        """The view of label budget `name`: the root itself when it is the primary budget."""
        return Workspace(self.root, "" if primary else name)

    @property
    def label_root(self) -> Path:
        return self.root / "budgets" / self.scope if self.scope else self.root

    # data built or indexed by core.data.tables
    @property
    def data_dir(self) -> Path: return self.root / "data"
    @property
    def labeled_dir(self) -> Path: return self.data_dir / "labeled"        # {train,val,test}/CLASS/*.png
    @property
    def unlabeled_dir(self) -> Path: return self.data_dir / "unlabeled"    # POOL/*.png
    @property
    def split_manifest(self) -> Path: return self.data_dir / "splits.csv"  # path,class,split
    @property
    def pools_file(self) -> Path: return self.data_dir / "pools.csv"       # path,pool,weight

    # the labels this view's budget may use: path,label,class_name,split (train|val)
    @property
    def labels_file(self) -> Path: return self.labels_of(self.label_root)

    # models, each in diffusers save_pretrained layout (safetensors + config.json); the root
    # models/ is also the GuidedLatentPipeline folder (model_index.json: vae, unet, scheduler,
    # classifier), so its component folders are named as the pipeline names them
    @property
    def models_dir(self) -> Path: return self.root / "models"
    @property
    def autoencoder_dir(self) -> Path: return self.models_dir / "vae"
    @property
    def unet_dir(self) -> Path: return self.models_dir / "unet"
    @property
    def scheduler_dir(self) -> Path: return self.models_dir / "scheduler"
    @property
    def latent_classifier_dir(self) -> Path: return self.label_root / "models" / "latent_classifier"
    @property
    def finetuned_unet_dir(self) -> Path: return self.label_root / "models" / "unet_finetuned"
    @property
    def filter_classifier_dir(self) -> Path: return self.label_root / "models" / "filter_classifier"

    # training state: label-trained stages keep theirs under the budget's root
    @property
    def cache_dir(self) -> Path: return self.root / "cache"
    @property
    def checkpoints_dir(self) -> Path: return self.label_root / "checkpoints"
    @property
    def metrics_dir(self) -> Path: return self.label_root / "metrics"     # STAGE.jsonl, read live by the UI
    @property
    def samples_dir(self) -> Path: return self.root / "samples"           # pretrain sample grids

    # synthetic data and results
    @property
    def synthetic_dir(self) -> Path: return self.label_root / "synthetic"  # CLASS/*.png + manifest.csv
    @property
    def accepted_dir(self) -> Path: return self.label_root / "accepted"    # ImageFolder + manifest.csv
    @property
    def results_dir(self) -> Path: return self.root / "results"           # runs.csv, summary.json
    @property
    def runs_dir(self) -> Path: return self.results_dir / "runs"          # RUN_KEY/labels.csv, predictions
    @property
    def stages_dir(self) -> Path: return self.label_root / "stages"       # STAGE.json markers (config hash)

    def feature_cache(self, key: str) -> Path:   # core.evaluate.features: image features by content hash
        return self.cache_dir / f"features-{key}.safetensors"

    @property
    def synthetic_manifest(self) -> Path: return self.manifest_of(self.synthetic_dir)
    @property
    def synthetic_scores(self) -> Path: return self.scores_of(self.synthetic_dir)
    @property
    def val_scores(self) -> Path: return self.synthetic_dir / "val_scores.csv"    # filter p(target), real val images
    @property
    def selection_thresholds(self) -> Path: return self.synthetic_dir / "thresholds.csv"  # per class (calibration)
    @property
    def real_reference(self) -> Path: return self.synthetic_dir / "real_reference.csv"  # per class (realism)
    @property
    def quality_csv(self) -> Path: return self.results_dir / "quality.csv"          # core.evaluate.quality
    @property
    def guidance_sweep_csv(self) -> Path: return self.results_dir / "guidance_sweep.csv"  # core.protocol.tune
    @property
    def quality_images_csv(self) -> Path: return self.results_dir / "quality_images.csv"  # nearest real per image

    def metrics_file(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.jsonl"

    # --- every other file name a stage or the app reads or writes (tests/test_layout.py keeps
    # their literals here: a name spelled in two modules drifts apart) ---
    @property
    def config_file(self) -> Path: return self.root / "config.json"     # the LabConfig of the workspace
    @property
    def lock_file(self) -> Path: return self.root / ".writer.lock"      # writer_lock: who writes now
    @property
    def classes_file(self) -> Path: return self.data_dir / "classes.json"  # ordered class names
    @property
    def split_protocol_file(self) -> Path: return self.data_dir / "split_protocol.json"
    @property
    def demo_data_marker(self) -> Path: return self.data_dir / "demo.json"   # core.data.demo's build key
    @property
    def data_sources_file(self) -> Path: return self.data_dir / "sources.json"   # core.protocol.sources
    @property
    def accepted_manifest(self) -> Path: return self.manifest_of(self.accepted_dir)
    @property
    def runs_csv(self) -> Path: return self.results_dir / "runs.csv"        # one row per grid run
    @property
    def runs_archive_csv(self) -> Path: return self.results_dir / "runs_other_configs.csv"
    @property
    def summary_json(self) -> Path: return self.results_dir / "summary.json"  # core.evaluate.summary.summarize
    @property
    def summary_md(self) -> Path: return self.results_dir / "summary.md"      # core.evaluate.summary.markdown_table

    def run_dir(self, key: str) -> Path: return self.runs_dir / key
    def run_predictions(self, key: str) -> Path: return self.run_dir(key) / "predictions.csv"
    def run_synthetic(self, key: str) -> Path: return self.run_dir(key) / "synthetic.csv"

    def marker_file(self, stage: str) -> Path: return self.stages_dir / f"{stage}.json"
    def marker_files(self) -> list[Path]: return sorted(self.stages_dir.glob("*.json"))
    def metrics_files(self) -> list[Path]: return sorted(self.metrics_dir.glob("*.jsonl"))
    def checkpoint_dir(self, stage: str) -> Path: return self.checkpoints_dir / stage

    def grid_file(self, stage: str, step: int) -> Path:    # a trainer's sample grid at a step
        return self.samples_dir / stage / f"step-{step:06d}.png"

    def grid_files(self, stage: str) -> list[Path]:
        return list((self.samples_dir / stage).glob("step-*.png"))

    # names shared by several folders, some filled in a temporary folder first (core.io.atomic_dir)
    @staticmethod
    def manifest_of(folder: str | Path) -> Path: return Path(folder) / "manifest.csv"  # image sets
    @staticmethod
    def scores_of(folder: str | Path) -> Path: return Path(folder) / "scores.csv"      # a synthetic set's scores
    @staticmethod
    def skipped_of(folder: str | Path) -> Path: return Path(folder) / "skipped.csv"    # files an export left out
    @staticmethod
    def labels_of(folder: str | Path) -> Path: return Path(folder) / "labels.csv"      # labels a model/run used
    @staticmethod
    def patches_of(folder: str | Path) -> Path: return Path(folder) / "patches.csv"    # demo patch boxes
    @staticmethod
    def config_of(folder: str | Path) -> Path:
        """An output folder's config.json: in a model folder diffusers' (or the filter
        classifier's) own model config, elsewhere the LabConfig that made the folder."""
        return Path(folder) / "config.json"

    @staticmethod
    def lab_config_of(folder: str | Path) -> Path: return Path(folder) / LAB_CONFIG
    @staticmethod
    def scheduler_config_of(folder: str | Path) -> Path: return Path(folder) / "scheduler_config.json"  # diffusers'
    @staticmethod
    def model_index_of(folder: str | Path) -> Path: return Path(folder) / "model_index.json"  # diffusers' pipeline index
    @staticmethod
    def model_card_of(folder: str | Path) -> Path: return Path(folder) / "README.md"  # the Hub's model card name
    @staticmethod
    def weights_of(folder: str | Path) -> Path: return Path(folder) / "model.safetensors"
    @staticmethod
    def centroids_of(folder: str | Path) -> Path: return Path(folder) / "centroids.safetensors"
    @staticmethod
    def member_of(folder: str | Path, i: int) -> Path:   # a filter classifier ensemble's member i (0: itself)
        return Path(folder) / "members" / str(i) if i else Path(folder)
    @staticmethod
    def history_of(folder: str | Path) -> Path: return Path(folder) / "history.csv"    # filter classifier curve
    @staticmethod
    def accuracy_by_t_of(folder: str | Path) -> Path: return Path(folder) / "accuracy_by_t.csv"
    @staticmethod
    def run_key_of(folder: str | Path) -> Path: return Path(folder) / "run_key.json"   # whose checkpoints these are

    def relative(self, path: str | Path) -> str:
        """A path inside the workspace as the workspace-relative POSIX string tables store."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def ensure(self) -> "Workspace":
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def migrate_layout(root: str | Path) -> list[Path]:
    """Rename the model folders of older layouts ([budgets/NAME/]models/autoencoder, .../classifier)
    to their pipeline component names, the trainers' metrics and checkpoints to their stage names,
    and the folder paths the results tables recorded for each run; returns what was renamed.

    Each rename is one os.rename: a reader sees the old folder or the new one, never a half.
    The weights' file names do not change, so model hashes and stage markers stay valid."""
    root = Path(root)
    moved = []
    scopes = [root, *sorted((root / "budgets").glob("*"))]
    pairs = [(scope / "models" / old, scope / "models" / new) for scope in scopes
             for old, new in LEGACY_MODEL_DIRS.items()]
    pairs += [(scope / folder / f"{old}{suffix}", scope / folder / f"{new}{suffix}") for scope in scopes
              for old, new in LEGACY_STAGE_NAMES.items()
              for folder, suffix in (("metrics", ".jsonl"), ("checkpoints", ""))]
    for src, dst in pairs:
        if not src.exists():
            continue
        if dst.exists():
            warnings.warn(f"{src} and {dst} both exist; using {dst} and leaving {src} alone",
                          RuntimeWarning, stacklevel=3)
            continue
        try:
            os.rename(src, dst)
            moved.append(dst)
        except FileNotFoundError:    # another process opening the workspace renamed it first
            pass
    for table in (root / "results").glob("runs*.csv"):   # also after a rename a crash cut short
        _rename_recorded_paths(table)
    return moved


def _rename_recorded_paths(table: Path) -> None:
    """Workspace-relative model folder paths in a CSV (runs.csv's latent_classifier column) under
    their new names; the file is replaced whole, as every table write here is."""
    text = table.read_text(encoding="utf-8")
    new = text
    for old, name in LEGACY_MODEL_DIRS.items():
        # a whole path segment only: preceded by a cell/path start, followed by a cell/path end
        new = re.sub(rf'(?<![^,/"\n])models/{old}(?=[,/"\r\n]|$)', f"models/{name}", new)
    if new != text:
        tmp = table.with_name(f".{table.name}.migrate-{os.getpid()}")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, table)


_HELD: dict[Path, list] = {}     # root -> [fd, depth]: this process's writer locks (re-entered, not re-taken)
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def writer_lock(root: str | Path, command: str, wait: bool = False,
                notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the workspace's one writer slot: an exclusive `flock` on its lock file, which the OS
    releases when the process dies (a `kill -9` never leaves a stale lock).

    Args:
        root: the workspace folder.
        command: what this process runs, shown to a writer that finds the slot taken.
        wait: wait for the slot instead of refusing; `notify(line)` hears whom it waits for.
    Raises:
        WorkspaceBusy: "workspace busy: pid N, `command`" when another process holds it.
    A process holding the slot re-enters it (nested calls, the app's jobs)."""
    root = Path(root).expanduser().resolve()
    with _HELD_GUARD:
        held = _HELD.get(root)
        if held is not None:
            held[1] += 1
    if held is None:
        fd = _take(root, command, wait, notify)
        with _HELD_GUARD:
            _HELD[root] = [fd, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            _HELD[root][1] -= 1
            fd = _HELD.pop(root)[0] if _HELD[root][1] == 0 else None
        if fd is not None:
            os.ftruncate(fd, 0)      # nobody writes now; then the close releases the lock
            os.close(fd)


def _take(root: Path, command: str, wait: bool, notify) -> int:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(Workspace(root, migrate=False).lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = f"workspace busy: pid {_holder(fd)}"
            if not wait:
                raise WorkspaceBusy(f"{busy} (workspace {root}); wait for it to finish, or pass --wait") from None
            if notify is not None:
                notify(f"{busy}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command,
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> str:
    """'N, `command`' of the process holding the lock (it writes them just after taking it)."""
    for _ in range(20):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except (ValueError, OSError):
            info = None
        if isinstance(info, dict):
            return f"{info.get('pid')}, `{info.get('command')}`"
        time.sleep(0.05)
    return "unknown"
