"""How fast the UI can re-filter stored scores (each rule beside a groupby-rank floor timed in the
same run), and the backbone's training throughput.

python -m benchmarks.filter_speed [--rows 1000 100000] [--backbone resnet18 --image-size 64]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch


def scores_table(n: int, classes: int = 9, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = [f"c{k}" for k in range(classes)]
    return pd.DataFrame({"file": [f"{i}.png" for i in range(n)], "class": rng.choice(names, n),
                         "confidence": rng.random(n), "nearest_class": rng.choice(names, n),
                         "centroid_distance": rng.random(n)})


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def refilter_rows(sizes: list[int]) -> list[dict]:
    """What one slider move costs: each rule on `n` stored scores, best of 5, side by side with
    the floor any per-class quota needs (one pandas groupby-rank of the same table, timed in the
    same run), so the ratio reads the same on a busy or a quiet machine."""
    from core.evaluate.selection import acceptance_curve, apply_threshold
    rows = []
    for n in sizes:
        s = scores_table(n)
        floor = best_of(lambda: s.groupby("class")["confidence"].rank(method="first"))
        for name, fn in (("threshold + quota 50", lambda: apply_threshold(s, 0.5, quota_per_class=50)),
                         ("centroid + quota 50", lambda: apply_threshold(s, 0.5, strategy="centroid",
                                                                         quota_per_class=50)),
                         ("acceptance curve, 101 thresholds", lambda: acceptance_curve(s, np.linspace(0, 1, 101)))):
            t = best_of(fn)
            rows.append({"rows": n, "operation": name, "ms": t * 1e3, "x groupby-rank": t / floor})
        rows.append({"rows": n, "operation": "floor: groupby-rank", "ms": floor * 1e3, "x groupby-rank": 1.0})
    return rows


def main() -> None:
    from benchmarks.common import markdown_table
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    print(markdown_table(refilter_rows(args.rows)))
    if args.skip_train:
        return
    from core.models import build_backbone
    model = build_backbone(args.backbone, 9).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 9, (args.batch,))
    for dtype in (None, torch.bfloat16):
        def step():
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        step()
        t = best_of(step, 3)
        print(f"{args.backbone} {args.image_size}px batch {args.batch} "
              f"{'bf16' if dtype else 'fp32'}: {args.batch / t:.0f} images/s ({t:.2f} s/step)")


if __name__ == "__main__":
    main()
