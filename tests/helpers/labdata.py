"""Labeled and synthetic images made in the test: classes differ by colour, so a tiny backbone
separates them in a couple of epochs (a real learning signal, not a mock)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.io import folder_hash, save_png
from core.generate.sampling import SEED_STRIDE
from core.workspace import Workspace

COLOURS = [(200, 60, 80), (70, 90, 210), (90, 190, 90)]


def tile(rng: np.random.Generator, label: int, size: int = 32) -> Image.Image:
    base = np.array(COLOURS[label], dtype=np.float64)
    noise = rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def image_folder(root, classes, per_class, size, seed) -> Path:
    """A user's labeled folder: root/<class>/<class>_<i>.jpg, colour-coded like `tile`."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tile(rng, label, size).save(root / name / f"{name}_{i}.jpg", quality=95)
    return root


def make_splits(ws, classes=("tumor", "stroma"), per_split=None, size=32, seed=0) -> pd.DataFrame:
    """ws.labeled_dir/{split}/{class}/*.png + data/splits.csv + data/classes.json."""
    per_split = per_split or {"train": 12, "val": 6, "test": 6}
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in per_split.items():
        for label, name in enumerate(classes):
            for i in range(n):
                path = ws.labeled_dir / split / name / f"{name}-{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                tile(rng, label, size).save(path)
                rows.append({"path": str(path), "label": label, "class_name": name, "split": split})
    frame = pd.DataFrame(rows)
    ws.data_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(ws.split_manifest, index=False)
    (ws.data_dir / "classes.json").write_text(json.dumps(list(classes)))
    return frame


def make_synthetic(ws, classes=("tumor", "stroma"), per_class=6, size=32, seed=1) -> pd.DataFrame:
    """Synthetic set shaped like core.generate.sampling's output: PNGs with params + manifest.csv.

    Half of each class is drawn in its own colour, half in the other class's colour
    (a generator failure the filter must reject)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            drawn = label if i % 2 == 0 else (label + 1) % len(classes)
            # the tiny preset's sampling parameters and seeds, and the hashes of whatever model
            # folders the workspace has: the experiment keeps only images its config made
            params = {"class": name, "seed": label * SEED_STRIDE + i, "guidance_scale": 10.0, "steps": 4,
                      "scheduler": "ddim", "eta": 1.0, "unet_hash": folder_hash(ws.unet_dir),
                      "vae_hash": folder_hash(ws.autoencoder_dir),
                      "classifier_hash": folder_hash(ws.latent_classifier_dir)}
            rel = f"{name}/{name}-{i:04d}.png"
            save_png(tile(rng, drawn, size), ws.synthetic_dir / rel, params)
            rows.append({"file": rel, "label": label, **params})
    frame = pd.DataFrame(rows)
    frame.to_csv(ws.synthetic_dir / "manifest.csv", index=False)
    return frame


def assert_one_label_budget(ws) -> None:
    """From the files alone: every run's labels.csv, its latent classifier's and its filter
    classifier's list the same images, none from test, and the run's label fraction of the
    labeled pool per class and part (train / val)."""
    splits = pd.read_csv(ws.split_manifest)
    pool, test = splits[splits.split != "test"], set(splits[splits.split == "test"].path)
    runs = pd.read_csv(ws.results_dir / "runs.csv")
    assert len(runs) > 0
    for row in runs.itertuples():
        own = pd.read_csv(ws.root / row.labels)
        latent = pd.read_csv(ws.root / row.latent_classifier / "labels.csv")
        filt = pd.read_csv(ws.root / row.filter_classifier / "labels.csv")
        assert set(own.path) == set(latent.path) == set(filt.path)
        for other in (latent, filt):
            assert own.set_index("path").loc[other.path, "split"].tolist() == other.split.tolist()
        assert not set(own.path) & test
        for split in ("train", "val"):
            part = pool[pool.split == split].groupby("class_name").size()
            got = own[own.split == split].groupby("class_name").size().reindex(part.index, fill_value=0)
            assert (got - (part * row.label_fraction).round()).abs().max() == 0, (split, got, part)
        assert row.n_real == (own.split == "train").sum() and row.n_val == (own.split == "val").sum()


def copy_workspace(ws, root) -> Workspace:
    """A copy of `ws` at `root` whose tables name the copy's own files (tables hold absolute
    paths; stage markers hash them relative to the workspace), so every stage done in `ws` is
    done in the copy: one costly run, several scenarios each on its own copy."""
    root = Path(root)
    shutil.copytree(ws.root, root)
    for path in root.rglob("*"):
        if path.suffix in (".csv", ".json", ".jsonl", ".md") and path.is_file():
            text = path.read_text(encoding="utf-8")
            if str(ws.root) in text:
                path.write_text(text.replace(str(ws.root), str(root)), encoding="utf-8")
    return Workspace(root)
