"""Few-label protocol: stratified, seeded, reproducible; val from train; test never touched."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.errors import UserError
from core.data.tables import load_splits
from core.data.labeled import PATHMNIST_CLASSES, prepare_labeled, scan_labeled
from core.data.splits import split_off, stratified_take
from core.workspace import Workspace


def _frame(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"path": f"/d/{c}/{i:04d}.png", "class_name": c, "split": "train"}
            for c, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_stratified_take_is_stratified_reproducible_and_order_free():
    frame = _frame({"ADI": 200, "TUM": 100, "MUC": 7})
    idx = stratified_take(frame, 0.1, seed=3)
    got = frame.loc[idx].groupby("class_name").size().to_dict()
    assert got == {"ADI": 20, "TUM": 10, "MUC": 1}          # rare class keeps one image
    shuffled = frame.sample(frac=1, random_state=0)
    assert set(frame.loc[idx, "path"]) == set(shuffled.loc[stratified_take(shuffled, 0.1, 3), "path"])
    other = set(frame.loc[stratified_take(frame, 0.1, seed=4), "path"])
    assert other != set(frame.loc[idx, "path"])


def test_val_carve_keeps_splits_disjoint():
    frame = _frame({"a": 100, "b": 50})
    frame.loc[frame.index[::10], "split"] = "test"
    test_before = set(frame[frame.split == "test"].path)
    out = split_off(frame, 0.2, 1, "val")
    assert set(out[out.split == "test"].path) == test_before            # test untouched
    train, val = set(out[out.split == "train"].path), set(out[out.split == "val"].path)
    assert not train & val and not (train | val) & test_before
    assert len(val) == round(90 * 0.2) + round(45 * 0.2)


def _image_folder(root: Path, counts: dict[str, int], size=16, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / cls / f"{cls}-{i:03d}.{'tif' if i % 2 else 'PNG'}")
    return root


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes() if p.is_file() else b"dir")
    return h.hexdigest()


def test_prepare_folder_without_test_carves_test_first(tmp_path, tiny_cfg):
    root = _image_folder(tmp_path / "nct", {"ADI": 30, "TUM": 20, "EMPTY": 0})
    digest = _tree_digest(root)
    cfg = replace(tiny_cfg, data=replace(tiny_cfg.data, val_fraction=0.2))
    ws = Workspace(tmp_path / "ws")
    result = prepare_labeled(ws, cfg, root)
    assert _tree_digest(root) == digest                       # nothing written into user data
    assert result["empty_classes"] == ["EMPTY"]
    assert any("carved as test" in n for n in result["notes"])
    frame, classes = load_splits(ws)
    assert list(frame.columns) == ["path", "label", "class_name", "split"]
    assert classes == ["ADI", "TUM"] and set(frame.split) == {"train", "val", "test"}
    assert all(Path(p).is_absolute() and Path(p).parent.parent == root.resolve() for p in frame.path)
    assert frame.groupby("split").size()["test"] == 6 + 4        # 20% of each class
    again = Workspace(tmp_path / "ws2")
    prepare_labeled(again, cfg, root)
    assert load_splits(again)[0].equals(frame)                # same seed -> same split
    protocol = json.loads((ws.data_dir / "split_protocol.json").read_text())
    # the manifest is the whole labeled pool; label budgets are drawn from it later (core.data.budget)
    assert "label_fraction" not in protocol and protocol["seed"] == cfg.data.seed
    assert frame.groupby("split").size()["train"] + frame.groupby("split").size()["val"] == 24 + 16


def test_prepare_with_test_folder_and_class_mismatch(tmp_path, tiny_cfg):
    train = _image_folder(tmp_path / "train", {"ADI": 10, "TUM": 10})
    test = _image_folder(tmp_path / "test", {"ADI": 4, "TUM": 3}, seed=1)
    ws = Workspace(tmp_path / "ws")
    result = prepare_labeled(ws, tiny_cfg, train, test)
    frame, _ = load_splits(ws)
    assert frame[frame.split == "test"].path.map(lambda p: str(test.resolve()) in p).all()
    assert result["counts"]["test"] == {"ADI": 4, "TUM": 3}
    bad_test = _image_folder(tmp_path / "bad", {"LYM": 2})
    with pytest.raises(UserError, match="LYM"):
        prepare_labeled(ws, tiny_cfg, train, bad_test)


def test_folder_of_bad_files_only_is_a_clear_error(tmp_path, tiny_cfg):
    (tmp_path / "data" / "ADI").mkdir(parents=True)
    (tmp_path / "data" / "ADI" / "x.tif").write_bytes(b"garbage")
    with pytest.raises(UserError, match=str(tmp_path / "data")):
        prepare_labeled(Workspace(tmp_path / "ws"), tiny_cfg, tmp_path / "data")
    scan = scan_labeled(_image_folder(tmp_path / "ok", {"A": 2}))
    assert scan["layout"] == "classes" and len(scan["frame"]) == 2


def test_pathmnist_npz_is_materialised_with_class_names(tmp_path, tiny_cfg):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 90), ("val", 18), ("test", 27)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 9).reshape(-1, 1)
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    ws = Workspace(tmp_path / "ws")
    result = prepare_labeled(ws, tiny_cfg, tmp_path / "pathmnist.npz")
    frame, classes = load_splits(ws)
    assert classes == PATHMNIST_CLASSES
    assert result["counts"]["test"] == {c: 3 for c in PATHMNIST_CLASSES}   # the file's own test
    assert (frame.split == "train").sum() + (frame.split == "val").sum() == 90 + 18   # its train + val
    first = frame.iloc[0]
    assert Path(first.path).is_relative_to(ws.labeled_dir / first.split / first.class_name)
    test_row = frame[frame.split == "test"].iloc[0]
    k = int(Path(test_row.path).stem.split("_")[1])
    assert np.array_equal(np.asarray(Image.open(test_row.path)), arrays["test_images"][k])
    assert arrays["test_labels"][k, 0] == test_row.label
