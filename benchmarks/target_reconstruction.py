"""How well the autoencoder reconstructs the labeled target, per class and split: PSNR / SSIM of
decode(encode(x)) on the target's tiles. Test tiles never reach pre-training (not even with
`data.pool_labeled_images`), so their row is the held-out figure; train and val are shown beside.

python -m benchmarks.target_reconstruction --workspace DIR [--workspace DIR2 ...]

Nothing here selects a model: it is a measurement of the generator's first half. Not a timed test.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import device_name, markdown_table


def reconstruction_table(ws_dir: Path) -> pd.DataFrame:
    """One row per split and class: images, mean PSNR (dB), mean SSIM."""
    from core.config.store import load_config
    from core.data.images import ImageDataset
    from core.data.tables import load_splits
    from core.models.load import load_autoencoder
    from core.train.autoencoder import evaluate_reconstruction
    from core.workspace import Workspace
    ws = Workspace(ws_dir)
    cfg = load_config(ws.config_file)
    vae = load_autoencoder(ws).eval()
    splits, _ = load_splits(ws)
    rows = []
    for (split, name), group in _groups(splits):
        data = ImageDataset(list(group.path), None, cfg.data.image_size)
        x = torch.stack([data[i] for i in range(len(data))])
        measured = evaluate_reconstruction(vae, x, batch=64)
        rows.append({"workspace": ws_dir.name, "split": split, "class": name, "images": len(x),
                     "PSNR dB": round(measured["psnr"], 2), "SSIM": round(measured["ssim"], 3)})
    return pd.DataFrame(rows)


def _groups(splits: pd.DataFrame):
    """(split, class) groups, then each split whole as class "all"."""
    yield from splits.groupby(["split", "class_name"], sort=True)
    for split, group in splits.groupby("split", sort=True):
        yield (split, "all"), group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, action="append", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device: {device_name(torch.device('cpu'))}")
    table = pd.concat([reconstruction_table(w) for w in args.workspace], ignore_index=True)
    print(markdown_table(table.to_dict("records")))


if __name__ == "__main__":
    main()
