import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from core.__main__ import main as core_main
from core.errors import UserError
from core.io import read_png_params
from core.generate.loading import load_pipeline
from core.generate.sampling import MANIFEST_COLUMNS, generate_images, generate_dataset, sample_seeds
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[3]


def fp32(cfg):
    return replace(cfg, sampling=replace(cfg.sampling, mixed_precision="no", batch_size=3, steps=4))


def diffusers_ddim(unet, scheduler_config, seeds, steps, eta):
    """diffusers' own DDIMPipeline loop (without its pixel post-processing) on the same noise."""
    sched = DDIMScheduler.from_config(scheduler_config, clip_sample=False)
    sched.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    c, s = unet.config.in_channels, unet.config.sample_size
    z = randn_tensor((len(seeds), c, s, s), generator=gens, dtype=torch.float32)
    with torch.no_grad():
        for t in sched.timesteps:
            z = sched.step(unet(z, t).sample, t, z, eta=eta, generator=gens).prev_sample
    return z


@pytest.mark.parametrize("steps,eta", [(7, 0.0), (13, 1.0)])
def test_scale_zero_ddim_equals_diffusers_loop(ws, tiny_cfg, steps, eta):
    pipe = load_pipeline(ws, tiny_cfg, sampler="ddim", mixed_precision="no")
    seeds = [3, 14, 15, 92]
    out = pipe([0, 1, 0, 1], seeds=seeds, guidance_scale=0.0, num_inference_steps=steps, eta=eta,
               output_type="latent")
    ref = diffusers_ddim(pipe.unet, pipe.scheduler.config, seeds, steps, eta)
    assert float((out.images - ref).abs().max()) <= 1e-5


def test_guidance_raises_target_probability_and_seeds_regenerate_alone(ws, tiny_cfg):
    pipe = load_pipeline(ws, tiny_cfg, sampler="ddim", mixed_precision="no")
    seeds, ids = [1, 2, 3, 4, 5, 6], [0, 1, 0, 1, 0, 1]
    plain = pipe(ids, seeds=seeds, guidance_scale=0.0, num_inference_steps=5, eta=1.0, output_type="latent").images
    guided = pipe(ids, seeds=seeds, guidance_scale=30.0, num_inference_steps=5, eta=1.0, output_type="latent").images

    def p_target(z):
        with torch.no_grad():
            return torch.softmax(pipe.latent_classifier(z, 0), -1)[torch.arange(len(ids)), torch.tensor(ids)].mean()
    assert p_target(guided) > p_target(plain)
    alone = pipe([1], seeds=[4], guidance_scale=30.0, num_inference_steps=5, eta=1.0, output_type="latent").images
    torch.testing.assert_close(alone[0], guided[3], atol=1e-4, rtol=1e-4)


def hand_guided_loop(pipe, ids, seeds, scale, steps, kind, eta=1.0):
    """Guided sampling written out: diffusers' step for the unguided update and its noise, the
    guidance terms by hand (Dhariwal & Nichol: eps - s sqrt(1 - a_t) grad; mean + s sigma^2 grad)."""
    sched = (DDIMScheduler if kind == "ddim" else DDPMScheduler).from_config(pipe.scheduler.config,
                                                                             clip_sample=False)
    sched.set_timesteps(steps)
    ts, ab, y = [int(t) for t in sched.timesteps], sched.alphas_cumprod.double(), torch.tensor(ids)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    c, size = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    z = randn_tensor((len(seeds), c, size, size), generator=gens, dtype=torch.float32)
    for i, t in enumerate(ts):
        with torch.no_grad():
            eps = pipe.unet(z, t).sample
        zg = z.clone().requires_grad_(True)
        with torch.enable_grad():
            log_p = torch.log_softmax(pipe.latent_classifier(zg, torch.full((len(ids),), t)), -1)
            (grad,) = torch.autograd.grad(log_p[torch.arange(len(ids)), y].sum(), zg)
        if kind == "ddim":
            eps = eps - scale * (1 - ab[t]).sqrt().float() * grad
            z = sched.step(eps, t, z, eta=eta, generator=gens).prev_sample
        else:
            ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
            var = (1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev) if t > 0 else 0.0
            z = sched.step(eps, t, z, generator=gens).prev_sample + scale * float(var) * grad
    return z


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_guided_sampling_equals_the_hand_written_loop(ws, tiny_cfg, kind):
    pipe = load_pipeline(ws, tiny_cfg, sampler=kind, mixed_precision="no")
    ids, seeds = [0, 1, 1], [5, 6, 7]
    out = pipe(ids, seeds=seeds, guidance_scale=20.0, num_inference_steps=6, eta=1.0, output_type="latent").images
    ref = hand_guided_loop(pipe, ids, seeds, 20.0, 6, kind)
    unguided = pipe(ids, seeds=seeds, guidance_scale=0.0, num_inference_steps=6, eta=1.0,
                    output_type="latent").images
    assert float((ref - unguided).abs().max()) > 1e-2        # the guidance term is not negligible
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_compile_that_fails_falls_back_to_eager_with_a_warning(ws, tiny_cfg, monkeypatch):
    """No C++ compiler for inductor (or an op it cannot trace) must cost speed, not the run."""
    def broken_compile(module, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler found")
        return call
    monkeypatch.setattr(torch, "compile", broken_compile)
    pipe = load_pipeline(ws, tiny_cfg, mixed_precision="no", compile=False)
    args = dict(seeds=[7, 8, 9], guidance_scale=10.0, num_inference_steps=3, eta=1.0, output_type="latent")
    eager = pipe([0, 1, 0], **args).images
    pipe = pipe.with_settings(compile=True)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        fallback = pipe([0, 1, 0], **args).images
    assert pipe.compiled("unet").failed and pipe.compiled("latent_classifier").failed
    torch.testing.assert_close(fallback, eager, atol=1e-5, rtol=1e-5)


def test_short_sequence_attention_matches_sdpa_and_takes_diffusers_arguments(ws, tiny_cfg, monkeypatch):
    """The CPU copy made for compiling computes what the SDPA original does, and diffusers passes
    it nothing it would drop with a warning (it warns on every call otherwise)."""
    from diffusers.models import attention_processor

    from core.models.compile import ShortSequenceAttnProcessor, compilable
    warned = []
    monkeypatch.setattr(attention_processor.logger, "warning", lambda msg, *a, **k: warned.append(msg))
    pipe = load_pipeline(ws, tiny_cfg)
    copy = compilable(pipe.unet)
    assert any(isinstance(m.processor, ShortSequenceAttnProcessor) for m in copy.modules() if hasattr(m, "processor"))
    z = torch.randn(2, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    with torch.no_grad():
        torch.testing.assert_close(copy(z, 10).sample, pipe.unet(z, 10).sample, atol=1e-5, rtol=1e-5)
    assert not warned


@pytest.mark.slow
def test_compiled_sampling_matches_eager(ws, tiny_cfg):
    """torch.compile (inductor; ~1 min for the tiny models on 2 cores) gives the eager latents."""
    pipe = load_pipeline(ws, tiny_cfg, mixed_precision="no", compile=False)
    args = dict(seeds=[7, 8, 9], guidance_scale=10.0, num_inference_steps=3, eta=1.0, output_type="latent")
    eager = pipe([0, 1, 0], **args).images
    compiled_pipe = pipe.with_settings(compile=True)
    compiled = compiled_pipe([0, 1, 0], **args).images
    assert compiled_pipe.compiled("unet").failed is None and compiled_pipe.compiled("latent_classifier").failed is None
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    processors = {type(m.processor).__name__ for m in pipe.unet.modules() if hasattr(m, "processor")}
    assert processors == {"AttnProcessor2_0"}        # the eager modules keep their processors


def test_ddpm_bf16_pil_and_interrupt(ws, tiny_cfg):
    pipe = load_pipeline(ws, tiny_cfg, sampler="ddpm", mixed_precision="bf16")
    out = pipe([0, 1], seeds=[7, 8], guidance_scale=5.0, num_inference_steps=6, eta=0.0)
    assert len(out.images) == 2 and out.images[0].size == (32, 32) and not out.interrupted
    seen = []

    def cb(pipe, i, t, tensors):
        seen.append((i + 1, pipe.num_timesteps, tuple(tensors["denoised"].shape)))
        if i + 1 >= 2:
            pipe._interrupt = True
        return tensors
    pipe = pipe.with_settings(sampler="ddim")
    out = pipe([0], seeds=[7], guidance_scale=5.0, num_inference_steps=6, eta=1.0, callback_on_step_end=cb,
               callback_on_step_end_tensor_inputs=["denoised"])
    assert out.interrupted and out.images == [] and [s[0] for s in seen] == [1, 2] and seen[0][1] == 6


def test_generate_writes_params_manifest_and_resumes(ws, tiny_cfg):
    cfg = fp32(tiny_cfg)
    rows = generate_images(ws, cfg, "stroma", 4, seed=10, guidance_scale=2.5, steps=3, eta=0.5)
    assert sorted(r["seed"] for r in rows) == [10, 11, 12, 13]
    manifest = pd.read_csv(ws.synthetic_dir / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS and len(manifest) == 4
    first = ws.synthetic_dir / "stroma" / "stroma-seed10-s2.5.png"
    params = read_png_params(first)
    assert params["seed"] == 10 and params["guidance_scale"] == 2.5 and params["steps"] == 3
    assert params["class"] == "stroma" and params["unet_hash"] == manifest["unet_hash"][0]
    mtime = first.stat().st_mtime_ns
    generate_images(ws, cfg, "stroma", 6, seed=10, guidance_scale=2.5, steps=3, eta=0.5)   # resume: 2 new
    manifest = pd.read_csv(ws.synthetic_dir / "manifest.csv")
    assert len(manifest) == 6 and manifest["file"].is_unique and first.stat().st_mtime_ns == mtime
    # the UI path gives the same image from the same seed and parameters
    again = next(sample_seeds(ws, cfg, "stroma", [10], 2.5, 3, 0.5)).images[0]
    from PIL import Image
    import numpy as np
    diff = np.abs(np.asarray(again, np.int16) - np.asarray(Image.open(first), np.int16)).max()
    assert diff <= 1
    # another sampling canvas (sampling.latent_margin) is another image: a new file, never a resume
    wide = replace(cfg, sampling=replace(cfg.sampling, latent_margin=2))
    rows = generate_images(ws, wide, "stroma", 2, seed=10, guidance_scale=2.5, steps=3, eta=0.5)
    assert [r["file"] for r in rows] == ["stroma/stroma-seed10-s2.5-m2.png", "stroma/stroma-seed11-s2.5-m2.png"]
    assert read_png_params(ws.synthetic_dir / rows[0]["file"])["latent_margin"] == 2
    assert Image.open(ws.synthetic_dir / rows[0]["file"]).size == Image.open(first).size
    assert first.stat().st_mtime_ns == mtime and len(pd.read_csv(ws.synthetic_dir / "manifest.csv")) == 8
    # and the experiment never mixes the canvases: each config owns only its own images
    from core.generate.sampling import made_by_config
    manifest = pd.read_csv(ws.synthetic_dir / "manifest.csv").drop(columns="seed")   # (these seeds are ad hoc)
    flat = replace(cfg, sampling=replace(cfg.sampling, guidance_scale=2.5, steps=3, eta=0.5))
    wide = replace(flat, sampling=replace(flat.sampling, latent_margin=2))
    assert made_by_config(ws, flat, manifest).tolist() == [True] * 6 + [False] * 2
    assert made_by_config(ws, wide, manifest).tolist() == [False] * 6 + [True] * 2


def test_generate_dataset_per_class_and_preview(ws, tiny_cfg):
    cfg = replace(fp32(tiny_cfg), sampling=replace(fp32(tiny_cfg).sampling, num_per_class=2))
    frame = generate_dataset(ws, cfg)
    assert frame.groupby("class").size().to_dict() == {"stroma": 2, "tumor": 2}
    by_class = frame.groupby("class")["seed"].apply(set)
    assert by_class["tumor"].isdisjoint(by_class["stroma"])   # classes never share initial noise
    assert (ws.synthetic_dir / "config.json").exists()
    previews = []
    list(sample_seeds(ws, cfg, "tumor", [1], 1.0, 4, 1.0,
                      progress=lambda info: previews.append(info.get("preview")), preview_every=2))
    assert [p is not None for p in previews] == [False, True, False, True]


def test_bad_input_is_a_clear_error(ws, tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="unknown class 'LYM'.*tumor"):
        generate_images(ws, tiny_cfg, "LYM", 2, 0)
    with pytest.raises(UserError, match="guidance_scale"):
        generate_images(ws, tiny_cfg, "tumor", 2, 0, guidance_scale=-1)
    with pytest.raises(UserError, match="steps"):
        generate_images(ws, tiny_cfg, "tumor", 2, 0, steps=0)
    empty = Workspace(tmp_path / "empty").ensure()
    with pytest.raises(UserError, match="autoencoder.*UNet.*scheduler.*latent classifier"):
        generate_images(empty, tiny_cfg, "tumor", 2, 0)
    assert core_main(["sample", "--workspace", str(empty.root), "--preset", "tiny", "--class", "tumor"]) == 2


def test_cli_sample(ws, tmp_path, capsys):
    out = tmp_path / "out"
    rc = core_main(["sample", "--workspace", str(ws.root), "--preset", "tiny", "--class", "tumor",
                    "--guidance-scale", "3", "--steps", "2", "--seed", "5", "--num", "2", "--out", str(out)])
    assert rc == 0 and sorted(p.name for p in (out / "tumor").iterdir()) == ["tumor-seed5-s3.png", "tumor-seed6-s3.png"]
    err = capsys.readouterr().err.splitlines()           # progress: a line for a log, not one per step
    assert [line for line in err if line.startswith("sample:")][-1].startswith("sample: 100% 2/2")


@pytest.mark.parametrize("flag, value, says", [("--eta", "nan", "--eta: sampling.eta must be in [0, 1], got nan"),
                                               ("--guidance-scale", "1e30", "--guidance-scale: at most"),
                                               ("--steps", "0", "--steps: sampling.steps must be"),
                                               ("--num", "0", "--num:")])
def test_cli_sample_refuses_a_bad_value_in_one_line_before_loading_a_model(ws, tmp_path, capsys, flag, value, says):
    out = tmp_path / "out"
    rc = core_main(["sample", "--workspace", str(ws.root), "--preset", "tiny", "--class", "tumor",
                    "--num", "2", "--out", str(out), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_cli_sample_compile_flag_compiles_both_models(ws, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(type(module).__name__) or module)
    rc = core_main(["sample", "--workspace", str(ws.root), "--preset", "tiny", "--class", "stroma",
                    "--steps", "2", "--num", "2", "--out", str(tmp_path / "out"), "--compile"])
    assert rc == 0 and sorted(compiled) == ["LatentClassifier", "UNet2DModel"]


@pytest.mark.distributed
def test_two_processes_split_seeds_without_duplicates(ws, tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from dataclasses import replace
        from core.config.presets import preset
        from core.generate.sampling import generate_images
        from core.workspace import Workspace
        cfg = preset("tiny")
        cfg = replace(cfg, sampling=replace(cfg.sampling, batch_size=2, steps=2))
        generate_images(Workspace({str(ws.root)!r}), cfg, "tumor", 7, seed=100)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(script)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = pd.read_csv(ws.synthetic_dir / "manifest.csv")
    assert sorted(manifest["seed"]) == list(range(100, 107)) and manifest["file"].is_unique


def test_per_class_guidance_scales_drive_generate_and_the_experiment_filter(ws, tiny_cfg):
    from core.errors import ConfigError
    from core.config.store import identity
    from core.generate.sampling import made_by_config
    base = replace(fp32(tiny_cfg), sampling=replace(fp32(tiny_cfg).sampling, num_per_class=2, guidance_scale=1.0))
    cfg = replace(base, sampling=replace(base.sampling, class_guidance_scales=("stroma=2.5",)))
    frame = generate_dataset(ws, cfg)
    names = {c: sorted(Path(f).name for f in g["file"]) for c, g in frame.groupby("class")}
    assert all(n.endswith("-s2.5.png") for n in names["stroma"]) and len(names["stroma"]) == 2
    assert all(n.endswith("-s1.png") for n in names["tumor"])
    manifest = pd.read_csv(ws.synthetic_dir / "manifest.csv")
    assert made_by_config(ws, cfg, manifest).all()
    # without the per-class entry, the stroma images are not what the config makes
    assert made_by_config(ws, base, manifest).tolist() == (manifest["class"] == "tumor").tolist()
    assert "class_guidance_scales" not in identity(base.sampling)      # old stage keys stay valid
    assert identity(cfg.sampling)["class_guidance_scales"] == ("stroma=2.5",)
    with pytest.raises(ConfigError, match="class_guidance_scales"):
        replace(base.sampling, class_guidance_scales=("stroma:2",)).validate()


def record_latents(store: list):
    def callback(pipe, i, t, tensors):
        store.append(tensors["latents"].clone())
        return tensors
    return callback


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_guidance_outside_its_interval_leaves_the_latents_unguided(ws, tiny_cfg, kind):
    pipe = load_pipeline(ws, tiny_cfg, sampler=kind, mixed_precision="no")
    sched = pipe.sampling_scheduler()
    sched.set_timesteps(6)
    ts = [int(t) for t in sched.timesteps]
    calls = []
    pipe.latent_classifier.register_forward_hook(lambda *a: calls.append(1))
    ids, args = [0, 1, 1], dict(seeds=[5, 6, 7], num_inference_steps=6, eta=1.0, output_type="latent")
    plain_steps, late_steps = [], []
    plain = pipe(ids, guidance_scale=0.0, callback_on_step_end=record_latents(plain_steps), **args).images
    # an interval between two timesteps holds none: unguided latents, bit for bit, and no classifier call
    gap = pipe(ids, guidance_scale=20.0, guidance_interval=(ts[1] + 1, ts[0] - 1), **args).images
    assert torch.equal(gap, plain) and calls == []
    # the last three steps only: the first three steps are the unguided ones, then they part
    late = pipe(ids, guidance_scale=20.0, guidance_interval=(0, ts[3]),
                callback_on_step_end=record_latents(late_steps), **args).images
    assert all(torch.equal(a, b) for a, b in zip(late_steps[:3], plain_steps[:3]))
    assert float((late - plain).abs().max()) > 1e-3 and len(calls) == 3      # one classifier pass per guided step
    everywhere = pipe(ids, guidance_scale=20.0, guidance_interval=(0, ts[0]), **args).images
    torch.testing.assert_close(everywhere, pipe(ids, guidance_scale=20.0, **args).images, rtol=0, atol=0)
    with pytest.raises(UserError, match="guidance_interval"):
        pipe(ids, guidance_scale=1.0, guidance_interval=(500, 100), **args)


def test_guidance_interval_in_config_cli_file_names_and_the_experiment_filter(ws, tiny_cfg, tmp_path):
    from core.config.checks import apply_overrides
    from core.config.store import identity
    from core.errors import ConfigError
    from core.generate.sampling import made_by_config
    assert "guidance_interval" not in identity(tiny_cfg.sampling)            # old stage keys stay valid
    cfg = apply_overrides(fp32(tiny_cfg), ["sampling.guidance_interval=0,500"])
    assert cfg.sampling.guidance_interval == (0, 500) and identity(cfg.sampling)["guidance_interval"] == (0, 500)
    for bad in ("500,100", "1,2,3", "0,1000"):
        with pytest.raises(ConfigError, match="sampling.guidance_interval"):
            apply_overrides(tiny_cfg, [f"sampling.guidance_interval={bad}"])
    rows = generate_images(ws, cfg, "tumor", 2, seed=3, guidance_scale=4.0)
    assert [r["file"] for r in rows] == ["tumor/tumor-seed3-s4-i0-500.png", "tumor/tumor-seed4-s4-i0-500.png"]
    assert read_png_params(ws.synthetic_dir / rows[0]["file"])["guidance_interval"] == [0, 500]
    generate_images(ws, fp32(tiny_cfg), "tumor", 2, seed=3, guidance_scale=4.0)   # every step: other files
    manifest = pd.read_csv(ws.synthetic_dir / "manifest.csv")
    assert len(manifest) == 4
    at = {c: replace(c, sampling=replace(c.sampling, guidance_scale=4.0, seed=3, num_per_class=2))
          for c in (cfg, fp32(tiny_cfg))}
    assert made_by_config(ws, at[cfg], manifest.assign(label=0)).tolist() == [True, True, False, False]
    assert made_by_config(ws, at[fp32(tiny_cfg)], manifest.assign(label=0)).tolist() == [False, False, True, True]
    out = tmp_path / "out"
    assert core_main(["sample", "--workspace", str(ws.root), "--preset", "tiny", "--class", "stroma", "--steps", "2",
                      "--num", "1", "--out", str(out), "--guidance-interval", "100,900"]) == 0
    assert [p.name for p in (out / "stroma").iterdir()] == ["stroma-seed0-s10-i100-900.png"]
    assert core_main(["sample", "--workspace", str(ws.root), "--preset", "tiny", "--class", "stroma",
                      "--guidance-interval", "9,1"]) == 2
