"""Run under `torchrun --nproc_per_node 2`: a tiny train_image_classifier (the grid's downstream
classifier), recording a checksum of every image each rank trains on.

Usage: torchrun --standalone --nproc_per_node 2 tests/core/train/dist_classify_worker.py WORKSPACE OUT_DIR
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import pandas as pd  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from core.train import image_classifier as classify  # noqa: E402
from core.config.checks import apply_overrides  # noqa: E402
from core.config.presets import preset  # noqa: E402
from core.workspace import Workspace  # noqa: E402

SETS = ["downstream.steps=4", "downstream.evals=2", "downstream.batch_size=8", "downstream.mixed_precision=no"]


def main(workspace: str, out_dir: str) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    seen = []
    real = classify.augmenter

    def recording(cfg, device):
        inner = real(cfg, device)

        def augment(batch_u8, gen):      # every rank augments the global batch alike, then takes its slice
            seen.append(batch_u8[rank::world].flatten(1).sum(1).tolist())     # one checksum per image
            return inner(batch_u8, gen)
        return augment
    classify.augmenter = recording
    splits = pd.read_csv(Workspace(workspace).split_manifest)
    cfg = apply_overrides(preset("tiny"), SETS).downstream
    model, history = classify.train_image_classifier(splits[splits.split == "train"], splits[splits.split == "val"],
                                               ["tumor", "stroma"], cfg, seed=0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    save_file(params, str(out / f"params{rank}.safetensors"))
    attrs = {k: history.attrs[k] for k in ("steps", "batch_size", "best_step", "best_val_balanced_accuracy")}
    rows = history.drop(columns="images_per_s").to_dict("records")
    (out / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "attrs": attrs, "history": rows}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
