import json
import threading
from dataclasses import replace

import pandas as pd
import pytest
import torch

from core.errors import UserError
from core.io import read_jsonl
from core.commands.latent_classifier import cli
from core.train.latent_classifier import train_latent_classifier
from core.models import LatentClassifier, load_latent_classifier
from core.models import build_scheduler
from core.workspace import Workspace
from ldm_fixtures import make_model_workspace


def quick(cfg, **classifier):
    return replace(cfg, latent_classifier=replace(cfg.latent_classifier, **{"mixed_precision": "no", "steps": 40, "lr": 2e-3,
                                                                "log_every": 10, **classifier}))


def test_forward_shapes_and_save_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = LatentClassifier(sample_size=8, in_channels=4, class_names=("a", "b", "c"), block_out_channels=(8, 16),
                             attention_resolutions=(4,), attention_head_dim=8).eval()
    z = torch.randn(5, 4, 8, 8)
    logits = model(z, torch.tensor([0, 10, 100, 500, 999]))
    assert logits.shape == (5, 3)
    assert model(z, 7).shape == (5, 3)
    model.save_pretrained(tmp_path / "clf")
    assert (tmp_path / "clf" / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["class_names"] == ["a", "b", "c"]
    again = LatentClassifier.from_pretrained(tmp_path / "clf").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(z, 10), model(z, 10))
    # the timestep matters: the same latents at another t give other logits
    with torch.no_grad():
        assert not torch.allclose(model(z, 0), model(z, 900))


def test_mean_pooling_variant():
    model = LatentClassifier(sample_size=8, in_channels=4, class_names=("a", "b"), block_out_channels=(8, 16),
                             pooling="mean")
    assert model.pool is None and model(torch.randn(2, 4, 8, 8), 3).shape == (2, 2)


def test_noise_aware_training_learns_and_logs_accuracy_by_t(tmp_path, tiny_cfg):
    # The random-weight autoencoder leaves a weak class signal in the latents (class means differ by
    # ~0.05 against a 0.5 per-pixel spread) and most training t are noise-dominated: at 60 steps the
    # noise-aware classifier was still at chance everywhere, so it trains longer here.
    cfg = quick(tiny_cfg, steps=400, batch_size=32, log_every=100)
    ws = make_model_workspace(tmp_path / "ws", cfg, unet=False)
    table = train_latent_classifier(ws, cfg)
    # balanced val (6 + 6): a classifier blind to z_t (a function of t alone) sat at 0.5 here
    assert table["accuracy"].iloc[:2].mean() >= 0.75, table["accuracy"].tolist()
    assert len(table) == cfg.latent_classifier.t_buckets and set(table["split"]) == {"val"}
    assert table["t_min"].iloc[0] == 0 and table["t_max"].iloc[-1] == 999
    assert set(table["noise_aware"]) == {True} and table["loss"].notna().all()
    saved = pd.read_csv(ws.latent_classifier_dir / "accuracy_by_t.csv")
    assert list(saved["accuracy"]) == pytest.approx(list(table["accuracy"]))
    model = load_latent_classifier(ws)
    assert list(model.config.class_names) == ["tumor", "stroma"]
    log = read_jsonl(ws.metrics_file("latent_classifier"))
    assert [r["step"] for r in log if "loss" in r] == [100, 200, 300, 400]
    assert any("accuracy_by_t" in r for r in log)


def test_t0_only_classifier_separates_clean_latents(tmp_path, tiny_cfg):
    cfg = quick(tiny_cfg, noise_aware=False, steps=60, batch_size=32)
    ws = make_model_workspace(tmp_path / "ws", cfg, unet=False)
    table = train_latent_classifier(ws, cfg)
    # colour-coded classes: clean latents must be separable well above chance (0.5)
    assert table["accuracy"].iloc[0] >= 0.75 and set(table["noise_aware"]) == {False}


def test_stop_then_resume(tmp_path, tiny_cfg):
    cfg = quick(tiny_cfg, steps=30, checkpoint_every=100)
    ws = make_model_workspace(tmp_path / "ws", cfg, unet=False)
    stop = threading.Event()

    def progress(p):
        if p["step"] == 12:
            stop.set()
    first = train_latent_classifier(ws, cfg, progress=progress, stop=stop)
    assert first.attrs["stopped"] and not ws.latent_classifier_dir.exists()
    assert (ws.checkpoints_dir / "latent_classifier" / "checkpoint-12").exists()
    steps_seen = []
    second = train_latent_classifier(ws, cfg, progress=lambda p: steps_seen.append(p["step"]))
    assert not second.attrs["stopped"] and steps_seen[0] == 13 and steps_seen[-1] == 30
    assert (ws.latent_classifier_dir / "config.json").exists()


def test_missing_models_and_data_are_clear_errors(tmp_path, tiny_cfg):
    ws = Workspace(tmp_path / "empty").ensure()
    with pytest.raises(UserError, match="scheduler"):
        train_latent_classifier(ws, tiny_cfg)
    with pytest.raises(UserError, match="latent classifier"):
        load_latent_classifier(ws)
    build_scheduler(tiny_cfg.pretrain).save_pretrained(ws.scheduler_dir)
    with pytest.raises(UserError, match="splits.csv"):
        train_latent_classifier(ws, tiny_cfg)
    assert cli(["--workspace", str(ws.root), "--preset", "tiny"]) == 2


def test_finetune_switch_writes_a_finetuned_unet(tmp_path, tiny_cfg):
    """Stored as pre-training stores its UNet (here fp16), with the budget's images named beside it."""
    cfg = quick(tiny_cfg, steps=5, finetune_unet=True, finetune_steps=4)
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, save_dtype="fp16"))
    ws = make_model_workspace(tmp_path / "ws", cfg)
    train_latent_classifier(ws, cfg)
    from diffusers import UNet2DModel
    before, after = UNet2DModel.from_pretrained(ws.unet_dir), UNet2DModel.from_pretrained(ws.finetuned_unet_dir)
    diffs = [float((a - b).abs().max()) for a, b in zip(before.parameters(), after.parameters())]
    assert max(diffs) > 0
    assert [r["step"] for r in read_jsonl(ws.metrics_file("unet_finetune")) if "loss" in r][-1] == 4
    from safetensors import safe_open
    with safe_open(str(ws.finetuned_unet_dir / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    assert (ws.finetuned_unet_dir / "labels.csv").exists()
