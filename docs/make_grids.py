"""The README's sample grids, from a workspace's models and synthetic set:

    python docs/make_grids.py --workspace W [--out docs] [--seeds 4] [--scales 0 1 3 10]

class_by_scale.png: one row per class, guidance scale rising to the right (the same seeds in every
cell, so s = 0 is the same unconditional sample in every row); per_class.png: for each class real train tiles, the first sampled images (whatever their score)
and the first accepted ones (at the bundled threshold).
Each cell is upscaled 2x with nearest neighbour, so what you see is the model's pixels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

ZOOM, GAP, LABEL_W, HEAD_H = 2, 4, 170, 18


def sheet(rows: list[tuple[str, list[Image.Image]]], heads: list[str], path: Path) -> Path:
    """Rows of equal-size tiles with a label on the left and a header over each column."""
    size = rows[0][1][0].width * ZOOM
    cols = max(len(r[1]) for r in rows)
    out = Image.new("RGB", (LABEL_W + cols * (size + GAP), HEAD_H + len(rows) * (size + GAP)), "white")
    draw = ImageDraw.Draw(out)
    for c, head in enumerate(heads):
        draw.text((LABEL_W + c * (size + GAP) + 2, 2), head, fill="black")
    for r, (label, tiles) in enumerate(rows):
        y = HEAD_H + r * (size + GAP)
        draw.text((4, y + size // 2 - 6), label, fill="black")
        for c, tile in enumerate(tiles):
            out.paste(tile.convert("RGB").resize((size, size), Image.Resampling.NEAREST),
                      (LABEL_W + c * (size + GAP), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def class_by_scale(ws, cfg, scales: list[float], seeds: list[int], path: Path) -> Path:
    from core.generate.sampling import sample_seeds
    from core.data.tables import load_splits
    _, classes = load_splits(ws)
    rows = []
    for name in classes:
        tiles = []
        for s in scales:
            for batch in sample_seeds(ws, cfg, name, seeds, s, cfg.sampling.steps, cfg.sampling.eta, compile=False):
                tiles += batch.images
        rows.append((name, tiles))
    heads = [f"s={s:g}" if i == 0 else "" for s in scales for i in range(len(seeds))]
    return sheet(rows, heads, path)


def per_class(ws, cfg, n: int, path: Path) -> Path:
    """Per class: real train tiles, the first sampled images (any score), the first accepted ones;
    only images the workspace's config made (the folder may hold other scales or canvases)."""
    import pandas as pd
    from core.data.tables import load_splits
    from core.generate.sampling import made_by_config
    frame, classes = load_splits(ws)
    scores, kept = pd.read_csv(ws.synthetic_scores), pd.read_csv(ws.accepted_manifest)
    scores = scores[made_by_config(ws, cfg, scores)]
    size = cfg.data.image_size
    blank = Image.new("RGB", (size, size), "white")
    rows = []
    for name in classes:
        real = frame[(frame.class_name == name) & (frame.split == "train")].path.head(n)
        sampled = scores[scores["class"] == name]["file"].head(n)
        accepted = kept[kept["class"] == name]["file"]
        rows += [(f"{name}: real", [Image.open(p) for p in real]),
                 (f"  sampled ({len(scores[scores['class'] == name])})",
                  [Image.open(ws.synthetic_dir / f) for f in sampled] or [blank]),
                 (f"  accepted ({len(accepted)})", [Image.open(ws.accepted_dir / f) for f in accepted.head(n)] or [blank])]
    return sheet(rows, [], path)


def main() -> None:
    from core.config.presets import config_for
    from core.workspace import Workspace
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    ap.add_argument("--per-class", type=int, default=8)
    args = ap.parse_args()
    ws = Workspace(args.workspace)
    cfg = config_for(ws)
    out = Path(args.out)
    print(class_by_scale(ws, cfg, args.scales, list(range(args.seeds)), out / "demo_class_by_scale.png"))
    print(per_class(ws, cfg, args.per_class, out / "demo_per_class.png"))


if __name__ == "__main__":
    main()
