"""Does the batch a seed is sampled in change its pixels, and what does batch 1 cost?

`python -m benchmarks.batch_invariance [--steps 25]` on the bundled demo models: seed 6 alone vs
inside batches of 2 and 8 (max |difference| in 1/255 over the 64x64x3 image) in bf16 and fp32
autocast, and images/s of 16 images at batch_size 1 vs 16.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--timing-images", type=int, default=16)
    p.add_argument("--precisions", default="bf16,no", help="autocast precisions to compare")
    p.add_argument("--timing-steps", type=int, default=None, help="steps for the timing (default --steps)")
    p.add_argument("--skip-diff", action="store_true", help="only the timing")
    args = p.parse_args(argv)
    from core.config.store import load_config
    from core.protocol.demo_models import install_demo
    from core.generate.loading import load_pipeline
    from core.workspace import Workspace
    ws = Workspace(Path(tempfile.mkdtemp()) / "ws")
    install_demo(ROOT / "assets" / "demo_models", ws)
    cfg = load_config(ws.root / "config.json")
    base = load_pipeline(ws, cfg, sampler="ddim", compile=False)
    label = base.get_label_ids(base.latent_classifier.config.class_names[0])[0]

    def run(seeds, batch, precision, steps=None):
        pipe = base.with_settings(mixed_precision=precision)
        images = {}
        for lo in range(0, len(seeds), batch):
            out = pipe(label, seeds=seeds[lo:lo + batch], guidance_scale=cfg.sampling.guidance_scale,
                       num_inference_steps=steps or args.steps, eta=cfg.sampling.eta)
            images.update({s: np.asarray(im, dtype=np.int16) for s, im in zip(out.seeds, out.images)})
        return images

    print("| precision | seed 6 in | max abs diff vs alone (1/255) | pixels differing |", flush=True)
    print("|---|---|---|---|")
    precisions = args.precisions.split(",")
    for precision in precisions if not args.skip_diff else ():
        alone = run([6], 1, precision)[6]
        for seeds in ([5, 6], [6, 7], list(range(6, 14))):
            other = run(seeds, len(seeds), precision)[6]
            diff = np.abs(other - alone)
            print(f"| {precision} | batch {seeds} | {diff.max()} | {100 * (diff > 0).mean():.1f}% |", flush=True)
    n = args.timing_images
    steps = args.timing_steps or args.steps
    print(f"\n| precision | {n} images, {steps} steps, at batch_size | s | images/s |")
    print("|---|---|---|---|")
    for precision in precisions:
        for batch in (1, n):
            t = time.perf_counter()
            run(list(range(n)), batch, precision, steps)
            dt = time.perf_counter() - t
            print(f"| {precision} | {batch} | {dt:.1f} | {n / dt:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
