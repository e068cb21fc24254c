"""torch.compile of the training steps (`<section>.compile`, core.train.trainer.Trainer.compiled): a
compiled run checkpoints, resumes and saves the keys of an eager one, and a compile that fails
costs a warning, never the run. Real compiling (inductor) takes minutes on 2 cores, so these runs
trace through dynamo with its "eager" backend; benchmarks/train_step.py times inductor."""
import functools
import shutil
import threading
import warnings
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from core.train import autoencoder as ae
from core.train.image_classifier import train_image_classifier
from core.config.checks import apply_overrides
from core.train.latent_classifier import train_latent_classifier
from core.models import build_autoencoder
from core.models.compile import CompiledOrEager
from core.train.pretrain import pretrain
from labdata import make_splits

REAL_COMPILE = torch.compile


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()        # compiled code of one test must not serve another's backend
    yield
    torch._dynamo.reset()


@pytest.fixture
def traced(monkeypatch):
    """torch.compile through dynamo with the "eager" backend (traced, no inductor); records what
    was compiled and how often the compiled callable ran."""
    seen = {"compiled": [], "calls": 0}

    def spy(fn, **kwargs):
        seen["compiled"].append(getattr(fn, "__qualname__", type(fn).__name__))
        compiled = REAL_COMPILE(fn, **{**kwargs, "backend": "eager", "options": None})

        def call(*args, **kw):
            seen["calls"] += 1
            return compiled(*args, **kw)
        return call
    monkeypatch.setattr(torch, "compile", spy)
    return seen


def broken(monkeypatch, when: str):
    """torch.compile that fails like a machine without a C++ compiler: at the call (inductor
    compiles at the first call) or at torch.compile itself (a torch that refuses this Python)."""
    def compile_(fn, **kwargs):
        if when == "compile":
            raise RuntimeError("Dynamo is not supported on this Python (no C++ compiler)")

        def call(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler found")
        return call
    monkeypatch.setattr(torch, "compile", compile_)


def ae_cfg(tiny_cfg, compile_: bool, steps=6):
    return replace(tiny_cfg, autoencoder=replace(tiny_cfg.autoencoder, steps=steps, checkpoint_every=3,
                                                 compile=compile_))


def eager_weights(ws, cfg) -> dict:
    """The weights an eager run saves, then the workspace as before it (the same tile paths, so
    the same held-out split: the compiled run trains on the same images)."""
    ae.train_autoencoder(ws, cfg)
    weights = load_file(ws.autoencoder_dir / "diffusion_pytorch_model.safetensors")
    for folder in (ws.autoencoder_dir, ws.checkpoints_dir / "autoencoder"):
        shutil.rmtree(folder)
    ws.metrics_file("autoencoder").unlink()
    return weights


def test_compiled_autoencoder_checkpoints_keep_their_keys_load_and_resume(pool_ws, tiny_cfg, traced):
    ws = pool_ws
    eager = eager_weights(ws, ae_cfg(tiny_cfg, False))
    assert traced["compiled"] == []                      # compile off: nothing compiled
    stop, seen = threading.Event(), []

    def progress(info):
        seen.append(info["step"])
        if info["step"] == 4:
            stop.set()
    out = ae.train_autoencoder(ws, ae_cfg(tiny_cfg, True), progress=progress, stop=stop)
    assert out["stopped"] and out["step"] == 4
    assert traced["compiled"] == ["train_autoencoder.<locals>.encode_moments",
                                  "train_autoencoder.<locals>.decode_sample"]
    assert traced["calls"] == 2 * 4                      # every step ran through the compiled callables
    # a checkpoint holds the plain model's keys (no `_orig_mod.` of torch.compile's wrapper)
    plain = set(build_autoencoder(tiny_cfg.autoencoder).state_dict())
    saved = load_file(ws.checkpoints_dir / "autoencoder" / "checkpoint-4" / "model.safetensors")
    assert set(saved) == plain
    seen.clear()
    out = ae.train_autoencoder(ws, ae_cfg(tiny_cfg, True), progress=progress)
    assert out["step"] == 6 and seen == [5, 6]          # resumed, not restarted
    # the saved model loads into the non-compiled class and is the eager run's model
    vae = AutoencoderKL.from_pretrained(ws.autoencoder_dir)
    assert set(vae.state_dict()) == set(eager) == plain
    for name, value in vae.state_dict().items():
        torch.testing.assert_close(value, eager[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("when", ["call", "compile"])
def test_failed_compile_trains_eagerly_with_a_warning(pool_ws, tiny_cfg, monkeypatch, when):
    ws = pool_ws
    eager = eager_weights(ws, ae_cfg(tiny_cfg, False, steps=3))
    broken(monkeypatch, when)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*running it eagerly"):
        out = ae.train_autoencoder(ws, ae_cfg(tiny_cfg, True, steps=3))
    assert out["step"] == 3 and not out["stopped"]
    fallback = load_file(ws.autoencoder_dir / "diffusion_pytorch_model.safetensors")
    assert fallback.keys() == eager.keys() and all(torch.equal(fallback[k], eager[k]) for k in eager)


def test_every_trainer_runs_its_step_through_the_compiled_forward(pool_ws, tiny_cfg, monkeypatch):
    """Pre-training, the latent classifier (and its UNet fine-tune) and the downstream classifier
    each hand their forward to Trainer.compiled: with compile failing, each warns and finishes."""
    ws = pool_ws
    splits = make_splits(ws)
    torch.manual_seed(0)
    vae = build_autoencoder(tiny_cfg.autoencoder)
    vae.register_to_config(scaling_factor=1.0)
    vae.save_pretrained(ws.autoencoder_dir)
    cfg = apply_overrides(tiny_cfg, [
        "pretrain.steps=2", "pretrain.compile=true", "pretrain.mixed_precision=no", "pretrain.sample_every=50",
        "latent_classifier.steps=2", "latent_classifier.compile=true", "latent_classifier.finetune_unet=true",
        "latent_classifier.finetune_steps=2", "latent_classifier.mixed_precision=no",
        "downstream.steps=2", "downstream.evals=1", "downstream.compile=true", "downstream.mixed_precision=no"])
    broken(monkeypatch, "call")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pretrain(ws, cfg)["step"] == 2
        assert not train_latent_classifier(ws, cfg).attrs["stopped"]
        train = splits[splits.split == "train"]
        _, history = train_image_classifier(train, splits[splits.split == "val"], ["tumor", "stroma"], cfg.downstream, seed=0)
        assert history.attrs["steps"] == 2
    failed = [str(w.message).split(" failed")[0] for w in caught if "running it eagerly" in str(w.message)]
    # the UNet twice: pre-training and the fine-tune; timm's test_resnet is a ResNet
    assert failed == ["torch.compile of UNet2DModel", "torch.compile of UNet2DModel",
                      "torch.compile of LatentClassifier", "torch.compile of ResNet"], failed


def test_a_backward_that_cannot_compile_falls_back_at_the_forward(monkeypatch):
    """torch compiles a backward lazily, at backward(), where running the forward eagerly is no
    longer possible; in training the backward is compiled with the forward, so its failure is
    caught there and the step runs eagerly."""
    from torch._dynamo.backends.common import aot_autograd

    def no_backward(gm, example_inputs):
        raise RuntimeError("inductor: no C++ compiler found (backward)")
    backend = aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=no_backward)
    monkeypatch.setattr(torch, "compile", functools.partial(REAL_COMPILE, backend=backend))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    step = CompiledOrEager(lambda x: model(x), training=True)   # noqa: PLW0108 - a function, as the autoencoder's
    with pytest.warns(RuntimeWarning, match="backward"):
        loss = step(torch.randn(3, 4)).sum()
    loss.backward()                                      # eager: nothing left to compile
    assert step.failed and all(p.grad is not None for p in model.parameters())


def test_compile_is_a_speed_setting_of_every_trainer_section(tiny_cfg):
    from core.config.store import identity
    for section in ("autoencoder", "pretrain", "latent_classifier", "filter_classifier", "downstream"):
        on = apply_overrides(tiny_cfg, [f"{section}.compile=true"])
        assert getattr(on, section).compile is True and getattr(tiny_cfg, section).compile is False
        assert identity(getattr(on, section)) == identity(getattr(tiny_cfg, section))   # stage keys unchanged
