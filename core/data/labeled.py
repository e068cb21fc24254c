"""Labeled data users really have -> data/splits.csv.

Two inputs: an ImageFolder in the NCT-CRC-HE-100K layout (ROOT/CLASS/*.tif, or ROOT/{train,
val,test}/CLASS/...), and a MedMNIST .npz (PathMNIST: train/val/test images + labels). User
folders are indexed in place, never copied and never written to; npz arrays are materialised as
PNGs under data/labeled/ because downstream reads images by path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from core.errors import UserError
from core.config.lab_config import LabConfig
from core.config.store import save_config
from core.data.images import array_to_rgb, is_image_path, scan_images
from core.data.splits import SPLITS, split_off, write_manifest
from core.workspace import Workspace

# MedMNIST v2 PathMNIST label order (medmnist INFO["pathmnist"]["label"]), written with the
# NCT-CRC-HE-100K folder codes so a PathMNIST run and a bring-your-own NCT run share class names.
PATHMNIST_CLASSES = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]


def scan_labeled(root: str | Path, max_pixels: int | None = None) -> dict:
    """Index an ImageFolder: {"frame": DataFrame(path, class_name, split|None), "classes",
    "skipped": [{"path", "reason"}], "empty_classes", "layout": "classes"|"splits"}.
    A folder without any usable image is a UserError naming it; a file over `max_pixels`
    (data.max_image_pixels) is skipped with its reason before it is decoded."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"labeled data folder not found: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLITS]
    rows, skipped, empty = [], [], []
    layout = "splits" if split_dirs and len(split_dirs) == len(subdirs) else "classes"
    groups = [(d.name.lower(), c) for d in split_dirs for c in _class_dirs(d)] if layout == "splits" \
        else [(None, c) for c in subdirs]
    for split, class_dir in groups:
        good, bad = scan_images(class_dir, max_pixels=max_pixels)
        skipped += bad
        if not good:
            empty.append(class_dir.name if split is None else f"{split}/{class_dir.name}")
        rows += [{"path": str(Path(g["path"]).resolve()), "class_name": class_dir.name,
                  "split": split, "width": g["width"], "height": g["height"]} for g in good]
    loose = [p for p in root.iterdir() if p.is_file() and is_image_path(p)]
    if loose:
        skipped += [{"path": str(p), "reason": "image outside a class folder (ROOT/CLASS/*.png expected)"}
                    for p in sorted(loose)]
    if not rows:
        raise UserError(f"no usable images in {root} (expected one sub-folder per class holding "
                        f".tif/.tiff/.png/.jpg/.jpeg files; {len(skipped)} file(s) skipped)")
    frame = pd.DataFrame(rows)
    classes = sorted(frame["class_name"].unique())
    return {"frame": frame, "classes": classes, "skipped": skipped, "empty_classes": empty,
            "layout": layout}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_npz(path: str | Path) -> dict:
    """MedMNIST arrays: {"train": (images, labels), ...}; class names from PATHMNIST_CLASSES
    when there are 9 labels, else `class_K`."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)          # never unpickle user files
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as .npz ({e})") from None
    splits = {}
    for split in SPLITS:
        if f"{split}_images" in data and f"{split}_labels" in data:
            images, labels = data[f"{split}_images"], np.asarray(data[f"{split}_labels"]).reshape(-1)
            if len(images) != len(labels):
                raise UserError(f"{path}: {split}_images has {len(images)} rows, {split}_labels {len(labels)}")
            splits[split] = (images, labels.astype(int))
    if "train" not in splits:
        raise UserError(f"{path}: no train_images/train_labels arrays (keys: {', '.join(data.files)})")
    n = int(max(labels.max() for _, labels in splits.values())) + 1
    pathmnist = n == len(PATHMNIST_CLASSES) or "pathmnist" in path.stem.lower()
    classes = PATHMNIST_CLASSES if pathmnist and n <= len(PATHMNIST_CLASSES) else [f"class_{k}" for k in range(n)]
    return {"splits": splits, "classes": list(classes)}


def _materialise_npz(ws: Workspace, npz: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """Write the selected npz rows as PNGs (existing files kept: a killed run resumes)."""
    paths = []
    for row in frame.itertuples():
        images, _ = npz["splits"][row.source_split]
        out = ws.labeled_dir / row.split / row.class_name / f"{row.source_split}_{row.index_in_split:06d}.png"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp")
            array_to_rgb(np.asarray(images[row.index_in_split])).save(tmp, format="PNG")
            tmp.replace(out)
        paths.append(str(out))
    return frame.assign(path=paths)


def _npz_frame(npz: dict) -> pd.DataFrame:
    rows = []
    for split, (_, labels) in npz["splits"].items():
        rows.append(pd.DataFrame({"source_split": split, "index_in_split": np.arange(len(labels)),
                                  "class_name": [npz["classes"][k] for k in labels]}))
    frame = pd.concat(rows, ignore_index=True)
    # a stable, sortable key so stratified draws are reproducible
    frame["path"] = frame["source_split"] + "/" + frame["index_in_split"].map("{:06d}".format)
    return frame


def prepare_labeled(ws: Workspace, cfg: LabConfig, labeled: str | Path,
                    test: str | Path | None = None) -> dict:
    """Few-label protocol over a labeled folder or .npz -> data/splits.csv (+ classes.json,
    split_protocol.json). Order: test (given, the file's own, or carved first), then validation
    carved from the rest. Label budgets are drawn later from train+val (core.data.budget)."""
    d, labeled = cfg.data, Path(labeled).expanduser()
    ws.ensure()
    notes, skipped, empty = [], [], []
    if labeled.suffix.lower() == ".npz":
        npz = read_npz(labeled)
        frame = _npz_frame(npz)
        classes = list(npz["classes"])
        has_test = "test" in npz["splits"] and test is None
        if test is not None:   # a test set given by hand replaces the file's own; never train on it
            frame = frame[frame["source_split"] != "test"]
        frame["split"] = np.where(frame["source_split"] == "test", "test", "train") if has_test else "train"
        if has_test:
            notes.append("test = the file's own test split; its train+val form the labeled pool")
    else:
        scan = scan_labeled(labeled, d.max_image_pixels)
        frame, classes = scan["frame"], scan["classes"]
        skipped, empty = scan["skipped"], scan["empty_classes"]
        has_test = scan["layout"] == "splits" and (frame["split"] == "test").any() and test is None
        if test is not None:
            frame = frame[frame["split"] != "test"].copy()
        frame["split"] = np.where(frame["split"] == "test", "test", "train") if has_test else "train"
        if has_test:
            notes.append("test = the folder's own test/ sub-folder")
    if test is not None:
        test_scan = scan_labeled(test, d.max_image_pixels)
        unknown = sorted(set(test_scan["classes"]) - set(classes))
        if unknown:
            why = [f"{c}: every file was unreadable (e.g. {_first_reason(skipped, c)})" for c in unknown if c in empty]
            raise UserError(f"test folder {test} has classes missing from {labeled}: {', '.join(unknown)}"
                            + (f" ({'; '.join(why)})" if why else ""))
        frame = pd.concat([frame, test_scan["frame"].assign(split="test")], ignore_index=True)
        skipped += test_scan["skipped"]
        empty += [f"test/{c}" for c in test_scan["empty_classes"]]
    elif not has_test:
        frame = split_off(frame, d.test_fraction, d.seed, "test")
        notes.append(f"no test set given: a stratified {d.test_fraction:.0%} of the labeled data "
                     f"(seed {d.seed}) was carved as test before anything else")
    frame = split_off(frame, d.val_fraction, d.seed + 1, "val")
    if labeled.suffix.lower() == ".npz":
        frame = _materialise_npz(ws, npz, frame)
    write_manifest(ws, frame, classes, {
        "source": str(labeled.resolve()), "test_source": str(Path(test).resolve()) if test else None,
        "val_fraction": d.val_fraction, "seed": d.seed,
        "notes": notes, "skipped": len(skipped)})
    save_config(cfg, ws.data_dir)
    counts = frame.groupby(["split", "class_name"]).size().unstack(fill_value=0)
    return {"classes": classes, "notes": notes, "skipped": skipped, "empty_classes": empty,
            "counts": {s: {c: int(v) for c, v in row.items()} for s, row in counts.iterrows()}}


def _first_reason(skipped: list[dict], class_name: str) -> str:
    hit = next((s for s in skipped if Path(s["path"]).parent.name == class_name), None)
    return f"{hit['path']}: {hit['reason']}" if hit else "no image files"


def npz_preview(path: str | Path) -> dict:
    """Counts per split/class of an .npz, for `data check`."""
    npz = read_npz(path)
    out = {"format": "npz", "classes": npz["classes"], "splits": {}}
    for split, (images, labels) in npz["splits"].items():
        counts = np.bincount(labels, minlength=len(npz["classes"]))
        out["splits"][split] = {"images": int(len(labels)), "shape": list(images.shape[1:]),
                                "counts": {npz["classes"][k]: int(v) for k, v in enumerate(counts)}}
    return out
