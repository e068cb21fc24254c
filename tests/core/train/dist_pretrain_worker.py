"""Run under `torchrun --nproc_per_node 2`: tiny pre-training, recording which latent rows each rank draws.

Usage: torchrun --standalone --nproc_per_node 2 tests/core/train/dist_pretrain_worker.py WORKSPACE OUT_DIR
"""
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from core.train import pretrain as pt  # noqa: E402
from core.config.presets import preset  # noqa: E402
from core.workspace import Workspace  # noqa: E402


def main(workspace: str, out_dir: str) -> None:
    rank = int(os.environ.get("RANK", 0))
    seen = []
    real = pt.step_indices

    def recording(weights, batch, seed, step, micro, r, world):
        idx = real(weights, batch, seed, step, micro, r, world)
        seen.append({"step": step, "micro": micro, "rank": r, "world": world, "idx": idx.tolist()})
        return idx
    pt.step_indices = recording
    cfg = preset("tiny")
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, steps=4, checkpoint_every=2, sample_every=4,
                                        log_every=1, mixed_precision="no"))
    out = pt.pretrain(Workspace(workspace), cfg)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"result": out["step"], "seen": seen}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
