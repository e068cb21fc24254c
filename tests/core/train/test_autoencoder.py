import json

import pytest
import torch
from diffusers import AutoencoderKL

from core.train import autoencoder as ae
from core.commands import autoencoder as ae_cmd
from core import models
from core.io import read_jsonl
from ldm_fixtures import make_pool_workspace


def test_build_encode_decode_shapes_and_scaling(tiny_cfg):
    vae = models.build_autoencoder(tiny_cfg.autoencoder).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        vae.register_to_config(scaling_factor=1.0)
        z1 = models.encode(vae, x)
        vae.register_to_config(scaling_factor=2.0)
        z2 = models.encode(vae, x)
        assert z1.shape == (2, tiny_cfg.autoencoder.latent_channels, tiny_cfg.latent_size, tiny_cfg.latent_size)
        torch.testing.assert_close(z2, 2 * z1)
        # decode divides by the same factor, so both round-trips agree
        torch.testing.assert_close(models.decode(vae, z2), models.decode(vae, 0.5 * z2 * 2))
        assert models.decode(vae, z2).abs().max() <= 1


def test_per_channel_latent_statistics_standardise_and_round_trip(tiny_cfg):
    """A config carrying diffusers' latents_mean / latents_std standardises each channel (the
    latent the UNet sees has mean 0, std 1 per channel on the images they were measured on) and
    decode undoes it exactly; a plain config is untouched."""
    vae = models.build_autoencoder(tiny_cfg.autoencoder).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        vae.register_to_config(scaling_factor=1.0)
        raw = models.encode(vae, x)
        mean, std = raw.mean((0, 2, 3)).tolist(), raw.std((0, 2, 3)).tolist()
        vae.register_to_config(latents_mean=mean, latents_std=std)
        z = models.encode(vae, x)
        torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(len(mean)), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.std((0, 2, 3)), torch.ones(len(mean)), atol=1e-4, rtol=0)
        vae.register_to_config(latents_mean=None, latents_std=None)
        plain = models.decode(vae, raw)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        torch.testing.assert_close(models.decode(vae, z), plain, atol=1e-5, rtol=0)


def test_psnr_ssim_reference_values():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.allclose(ae.ssim(x, x), torch.ones(3), atol=1e-5)
    # uniform [0,1] pixels (variance 1/12) + noise of variance 0.01: SSIM ~ (2/12)/(2/12 + 0.01) = 0.944
    noisy = x + 0.2 * torch.randn_like(x)
    assert ae.ssim(noisy, x).tolist() == pytest.approx([0.944] * 3, abs=0.015)
    assert (ae.ssim(-x, x) < 0).all()
    # PSNR on [0,1]: an error of 0.1 (0.2 in [-1,1]) everywhere is exactly 20 dB
    y = x.clamp(-1, 0.8)
    assert torch.allclose(ae.psnr(y + 0.2, y), torch.full((3,), 20.0), atol=1e-3)


def test_train_saves_diffusers_model_with_scale_and_metrics(tmp_path, tiny_cfg):
    ws = make_pool_workspace(tmp_path, n_per_pool=(10, 10))
    out = ae.train_autoencoder(ws, tiny_cfg)
    assert out["step"] == tiny_cfg.autoencoder.steps and not out["stopped"]
    assert 5 < out["psnr"] < 60 and -1 <= out["ssim"] <= 1 and out["held_out"] >= 1
    vae = AutoencoderKL.from_pretrained(ws.autoencoder_dir)
    assert vae.config.scaling_factor == pytest.approx(out["scaling_factor"]) and vae.config.scaling_factor != 1.0
    assert (ws.autoencoder_dir / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((ws.autoencoder_dir / "lab_config.json").read_text())["preset"] == "tiny"
    rows = read_jsonl(ws.metrics_file("autoencoder"))
    assert any("loss" in r for r in rows) and any("psnr" in r for r in rows)
    # scaled latents of the training data have roughly unit std
    from core.data.images import ImageDataset
    from core.data.tables import load_pools
    xs = torch.stack([ImageDataset(load_pools(ws)["path"], None, 32)[i] for i in range(20)])
    with torch.no_grad():
        assert 0.6 < float(models.encode(vae, xs).std()) < 1.6
    # a rerun resumes from the final checkpoint instead of training again
    again = ae.train_autoencoder(ws, tiny_cfg)
    assert again["step"] == tiny_cfg.autoencoder.steps


def test_fp16_save_stores_rounded_weights_and_measures_what_it_stores(tmp_path, tiny_cfg):
    from dataclasses import replace
    from safetensors.torch import load_file
    from core.data.images import ImageDataset
    from core.data.tables import load_pools
    ws = make_pool_workspace(tmp_path, n_per_pool=(10, 10))
    cfg = replace(tiny_cfg, autoencoder=replace(tiny_cfg.autoencoder, steps=4, save_dtype="fp16"))
    out = ae.train_autoencoder(ws, cfg)
    stored = load_file(ws.autoencoder_dir / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}
    vae = models.load_autoencoder(ws)
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    # the logged PSNR is that of the stored (rounded) weights, not of the fp32 ones before saving
    paths = list(load_pools(ws)["path"])
    held = ae.split_held_out([str(p) for p in paths])[1]
    x = torch.stack([ImageDataset([paths[i] for i in held], None, 32)[k] for k in range(len(held))])
    assert ae.evaluate_reconstruction(vae, x)["psnr"] == pytest.approx(out["psnr"], abs=1e-4)


def test_discriminator_branch_trains(pool_ws, tiny_cfg):
    from dataclasses import replace
    ws = pool_ws
    cfg = replace(tiny_cfg, autoencoder=replace(tiny_cfg.autoencoder, steps=3, disc_weight=0.5, disc_start=1))
    out = ae.train_autoencoder(ws, cfg)
    assert out["step"] == 3 and (ws.autoencoder_dir / "config.json").exists()
    assert models.PatchDiscriminator()(torch.zeros(1, 3, 32, 32)).ndim == 4


def test_missing_model_and_bad_config_are_clear_errors(tmp_path, capsys):
    ws = make_pool_workspace(tmp_path, n_per_pool=(2, 2))
    with pytest.raises(ae.UserError, match="no autoencoder"):
        models.load_autoencoder(ws)
    assert ae_cmd.cli(["--workspace", str(tmp_path), "--preset", "tiny", "--set", "autoencoder.steps=-1"]) == 2
    assert "autoencoder.steps" in capsys.readouterr().err
    assert ae_cmd.cli(["--workspace", str(tmp_path), "--preset", "nope"]) == 2
    assert "preset" in capsys.readouterr().err
    assert not ws.autoencoder_dir.exists()


def test_stop_checkpoints_and_rerun_resumes(pool_ws, tiny_cfg):
    import threading
    from dataclasses import replace
    ws = pool_ws
    cfg = replace(tiny_cfg, autoencoder=replace(tiny_cfg.autoencoder, steps=8, checkpoint_every=4))
    stop = threading.Event()
    seen = []

    def progress(info):
        seen.append(info["step"])
        if info["step"] == 6:
            stop.set()
    out = ae.train_autoencoder(ws, cfg, progress=progress, stop=stop)
    assert out == {**out, "stopped": True, "step": 6} and not ws.autoencoder_dir.exists()
    names = sorted(p.name for p in (ws.checkpoints_dir / "autoencoder").glob("checkpoint-*"))
    assert names == ["checkpoint-4", "checkpoint-6"]
    seen.clear()
    assert ae.train_autoencoder(ws, cfg, progress=progress)["step"] == 8
    assert seen == [7, 8]                                   # resumed, not restarted


def test_checkpoint_limit_comes_from_config_and_keys_no_stage(pool_ws, tiny_cfg):
    from core.config.checks import apply_overrides
    from core.config.store import identity
    ws = pool_ws
    cfg = apply_overrides(tiny_cfg, ["autoencoder.steps=3", "autoencoder.checkpoint_every=1",
                                     "autoencoder.checkpoints_total_limit=3"])
    ae.train_autoencoder(ws, cfg)
    names = sorted(p.name for p in (ws.checkpoints_dir / "autoencoder").glob("checkpoint-*"))
    assert names == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    for section in ("autoencoder", "latent_classifier"):       # disk use, not results: stage keys unchanged
        more = apply_overrides(tiny_cfg, [f"{section}.checkpoints_total_limit=5"])
        assert identity(getattr(more, section)) == identity(getattr(tiny_cfg, section))


def test_edge_padding_is_saved_with_the_model_and_used_by_encode_and_decode(tmp_path, tiny_cfg):
    from dataclasses import replace
    import torch.nn.functional as F
    plain = models.build_autoencoder(tiny_cfg.autoencoder)
    assert models.edge_padding(plain) == (0, 0) and "_edge_padding" not in plain.config
    vae = models.build_autoencoder(replace(tiny_cfg.autoencoder, encode_padding=2, decode_padding=1))
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path)
    loaded = AutoencoderKL.from_pretrained(tmp_path).eval()
    assert models.edge_padding(loaded) == (2, 1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f = models.factor(loaded)
    with torch.no_grad():
        z = models.encode(loaded, x)
        assert z.shape[-2:] == (32 // f, 32 // f)
        raw = loaded.encode(F.pad(x, (2 * f,) * 4, mode="reflect")).latent_dist.mode()[..., 2:-2, 2:-2]
        torch.testing.assert_close(z, raw * 0.5)
        out = models.decode(loaded, z)
        assert out.shape == x.shape
        ref = loaded.decode(F.pad(z / 0.5, (1,) * 4, mode="reflect")).sample[..., f:-f, f:-f].clamp(-1, 1)
        torch.testing.assert_close(out, ref)
