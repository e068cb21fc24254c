import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.config.presets import preset
from core.train.trainer import pool_row_weights
from ldm_fixtures import make_pool_workspace

WORKER = Path(__file__).with_name("dist_pretrain_worker.py")
CLASSIFY_WORKER = Path(__file__).with_name("dist_classify_worker.py")


@pytest.mark.distributed
def test_two_cpu_processes_shard_data_and_checkpoint_once(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    from core.train.autoencoder import train_autoencoder
    from core.data.tables import load_pools
    ws = make_pool_workspace(tmp_path / "ws", n_per_pool=(8, 6))
    train_autoencoder(ws, preset("tiny"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(WORKER),
                           str(ws.root), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["result"] == 4 for r in ranks)
    weights = pool_row_weights(load_pools(ws))
    batch = preset("tiny").pretrain.batch_size
    for a, b in zip(ranks[0]["seen"], ranks[1]["seen"]):
        assert (a["step"], a["rank"], a["world"], b["rank"]) == (b["step"], 0, 2, 1)
        # each rank takes its own slice of one global draw: different shards, together the global batch
        glob = np.random.default_rng([0, a["step"], a["micro"]]).choice(len(weights), 2 * batch, p=weights)
        assert a["idx"] == glob[0::2].tolist() and b["idx"] == glob[1::2].tolist()
    assert any(a["idx"] != b["idx"] for a, b in zip(ranks[0]["seen"], ranks[1]["seen"]))
    folder = ws.checkpoints_dir / "pretrain"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-4"]
    files = sorted(p.name for p in (folder / "checkpoint-4").iterdir())
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors", "unet_ema"} <= set(files)
    steps = [json.loads(line)["step"] for line in ws.metrics_file("pretrain").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]                                   # logged by the main process only
    assert (ws.unet_dir / "diffusion_pytorch_model.safetensors").exists()
    shutil.rmtree(tmp_path / "out")


@pytest.mark.distributed
def test_grid_classifier_trains_on_two_processes_with_one_global_batch(tmp_path):
    """train_image_classifier (every grid run) under torchrun: each rank takes its half of the one global
    batch a single device would draw, gradients are averaged (same weights on both ranks), and both
    ranks agree on validation and the best step."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    import torch
    from safetensors.torch import load_file

    from core.evaluate.inference import load_images
    from core.workspace import Workspace
    from labdata import make_splits
    splits = make_splits(Workspace(tmp_path / "ws").ensure())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(CLASSIFY_WORKER),
                           str(tmp_path / "ws"), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["attrs"] == ranks[1]["attrs"] and ranks[0]["attrs"]["steps"] == 4
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 2
    images, _, _ = load_images(splits[splits.split == "train"]["path"], 32)
    checksums = images.flatten(1).sum(1)
    gen = torch.Generator().manual_seed(0)            # the seed's order of the 24 images, batch 8
    first, second = torch.randperm(24, generator=gen), torch.randperm(24, generator=gen)
    batches = [first[0:8], first[8:16], first[16:24], second[0:8]]
    for rank, seen in enumerate(r["seen"] for r in ranks):
        assert seen == [checksums[b[rank::2]].tolist() for b in batches]
    a, b = (load_file(tmp_path / "out" / f"params{r}.safetensors") for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
