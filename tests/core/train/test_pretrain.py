import shutil
import threading

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from core.train import pretrain as pt
from core.commands import pretrain as pt_cmd
from core import models
from core.train import trainer as training
from core.errors import ConfigError
from core.config.checks import apply_overrides
from core.config.presets import preset
from core.io import read_jsonl, read_png_params
from core.workspace import Workspace
from ldm_fixtures import make_pool_workspace, message_lines, tiny


@pytest.fixture
def ws(trained_autoencoder, tmp_path):
    shutil.copytree(trained_autoencoder.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def unet_weights(ws):
    return load_file(ws.unet_dir / "diffusion_pytorch_model.safetensors")


def test_build_unet_follows_config():
    from dataclasses import replace
    paper = preset("paper").pretrain      # paper structure at toy widths (the full model takes seconds)
    unet = models.build_unet(replace(paper, block_out_channels=(8, 16, 16, 32, 32), attention_head_dim=8), 64, 3)
    assert unet.config.down_block_types == ("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                            "AttnDownBlock2D", "ResnetDownsampleBlock2D")
    assert unet.config.resnet_time_scale_shift == "scale_shift"
    assert unet.config.downsample_type == "resnet" and unet.config.upsample_type == "resnet"
    assert unet.config.up_block_types[1:4] == ("AttnUpBlock2D",) * 3
    sched = models.build_scheduler(paper)
    assert sched.config.num_train_timesteps == 1000 and sched.config.prediction_type == "epsilon"
    assert float(sched.betas[0]) == pytest.approx(0.0015) and float(sched.betas[-1]) == pytest.approx(0.0155)
    small = models.build_unet(preset("tiny").pretrain, 8, 4)
    assert small(torch.zeros(2, 4, 8, 8), torch.tensor([1, 2])).sample.shape == (2, 4, 8, 8)


def test_pretrain_end_to_end(ws, tiny_cfg):
    cfg = tiny(tiny_cfg, steps=40, lr=2e-3, log_every=10, sample_every=20, checkpoint_every=20)
    out = pt.pretrain(ws, cfg)
    assert out["step"] == 40 and not out["stopped"] and out["skipped_images"] == {}
    unet = UNet2DModel.from_pretrained(ws.unet_dir)
    assert unet.config.sample_size == 8 and "decay" not in unet.config   # clean config, EMA weights
    assert models.load_scheduler(ws).config.beta_start == pytest.approx(0.0015)
    rows = read_jsonl(ws.metrics_file("pretrain"))
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert all({"loss", "lr", "images_per_s", "time"} <= set(r) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    grid = ws.samples_dir / "pretrain" / "step-000040.png"
    assert read_png_params(grid)["step"] == 40 and read_png_params(grid)["weights"] == "ema"
    assert sorted(p.name for p in (ws.checkpoints_dir / "pretrain").glob("checkpoint-*")) == \
        ["checkpoint-20", "checkpoint-40"]
    ema = load_file(ws.checkpoints_dir / "pretrain" / "checkpoint-40" / "unet_ema" /
                    "diffusion_pytorch_model.safetensors")
    for k, v in unet_weights(ws).items():
        torch.testing.assert_close(v, ema[k])


def test_fp16_save_stores_the_rounded_ema_weights_that_later_stages_load(ws, tiny_cfg):
    pt.pretrain(ws, tiny(tiny_cfg, steps=4, checkpoint_every=4, sample_every=100, save_dtype="fp16"))
    stored = unet_weights(ws)
    assert {v.dtype for v in stored.values()} == {torch.float16}
    ema = load_file(ws.checkpoints_dir / "pretrain" / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    loaded = dict(models.load_unet(ws).named_parameters())
    for k, v in stored.items():
        torch.testing.assert_close(v, ema[k].half(), rtol=0, atol=0)      # the EMA, rounded once
        assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float())


def test_resume_after_stop_equals_uninterrupted(ws, tmp_path, tiny_cfg):
    cfg = tiny(tiny_cfg, steps=6, checkpoint_every=2, sample_every=100, log_every=1, grad_accum=2)
    other = Workspace(shutil.copytree(ws.root, tmp_path / "other"))
    pt.pretrain(ws, cfg)
    stop = threading.Event()

    def progress(info):
        if info.get("stage") == "pretrain" and info["step"] == 3:
            stop.set()
    first = pt.pretrain(other, cfg, progress=progress, stop=stop)
    assert first["stopped"] and first["step"] == 3
    assert (other.checkpoints_dir / "pretrain" / "checkpoint-3").exists() and not other.unet_dir.exists()
    second = pt.pretrain(other, cfg)
    assert second["step"] == 6 and not second["stopped"]
    a, b = unet_weights(ws), unet_weights(other)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ck = lambda w: load_file(w.checkpoints_dir / "pretrain" / "checkpoint-6" / "model.safetensors")  # noqa: E731
    for k, v in ck(ws).items():
        torch.testing.assert_close(v, ck(other)[k], rtol=0, atol=0)


def test_crash_mid_checkpoint_keeps_previous(ws, tiny_cfg, monkeypatch):
    cfg = tiny(tiny_cfg, steps=4, checkpoint_every=2, sample_every=100)
    real = training.Accelerator.save_state
    calls = {"n": 0}

    def crashing(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:       # second checkpoint: write half of it, then die
            real(self, output_dir, **kw)
            (training.Path(output_dir) / "optimizer.bin").unlink()
            raise OSError("disk full")
        return real(self, output_dir, **kw)
    monkeypatch.setattr(training.Accelerator, "save_state", crashing)
    with pytest.raises(OSError, match="disk full"):
        pt.pretrain(ws, cfg)
    folder = ws.checkpoints_dir / "pretrain"
    assert training.latest_checkpoint(folder)[0] == 2
    assert list(folder.glob(".checkpoint-*.tmp"))                 # the torn write is not a checkpoint
    monkeypatch.setattr(training.Accelerator, "save_state", real)
    out = pt.pretrain(ws, cfg)                                     # resumes from checkpoint-2
    assert out["step"] == 4 and not list(folder.glob(".checkpoint-*.tmp"))


def test_nan_loss_stops_naming_step_and_keeps_checkpoint(ws, tiny_cfg, monkeypatch):
    cfg = tiny(tiny_cfg, steps=8, checkpoint_every=2, sample_every=100)
    real = pt.augment
    calls = {"n": 0}

    def poisoned(z, g):
        calls["n"] += 1
        return real(z, g) * (float("nan") if calls["n"] == 4 else 1.0)   # the 4th step
    monkeypatch.setattr(pt, "augment", poisoned)
    with pytest.raises(training.TrainingDiverged, match=r"at step 4;.*checkpoint-2"):
        pt.pretrain(ws, cfg)
    names = [p.name for p in (ws.checkpoints_dir / "pretrain").glob("checkpoint-*")]
    assert names == ["checkpoint-2"] and not ws.unet_dir.exists()


def test_ctrl_c_writes_checkpoint_and_exits_cleanly(ws, tiny_cfg, monkeypatch, capsys):
    real = pt.make_step_fn

    def interrupting(*a, **k):
        step_fn = real(*a, **k)

        def fn(step):
            if step == 3:
                raise KeyboardInterrupt
            return step_fn(step)
        return fn
    monkeypatch.setattr(pt, "make_step_fn", interrupting)
    rc = pt_cmd.cli(["--workspace", str(ws.root), "--preset", "tiny", "--set", "pretrain.mixed_precision=no"])
    assert rc == 130 and "interrupted at step 3" in capsys.readouterr().out
    assert (ws.checkpoints_dir / "pretrain" / "checkpoint-3").exists()


@pytest.mark.parametrize("override, field", [
    ("pretrain.steps=-5", "pretrain.steps"),
    ("pretrain.block_out_channels=8,16,16,16,16", "pretrain.block_out_channels"),
    ("pretrain.mixed_precision=fp8", "pretrain.mixed_precision"),
    ("pretrain.save_dtype=bf16", "pretrain.save_dtype"),
    ("pretrain.stepz=3", "pretrain.stepz"),
])
def test_invalid_config_fails_at_once_naming_field(ws, override, field, capsys):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        apply_overrides(preset("tiny"), [override])
    assert pt_cmd.cli(["--workspace", str(ws.root), "--preset", "tiny", "--set", override]) == 2
    assert field in capsys.readouterr().err
    assert not (ws.checkpoints_dir / "pretrain").exists()


def test_missing_autoencoder_is_a_user_error(tmp_path, tiny_cfg):
    empty = make_pool_workspace(tmp_path, n_per_pool=(2, 2))
    with pytest.raises(pt.UserError, match="autoencoder"):
        pt.pretrain(empty, tiny_cfg)


def test_resume_refuses_a_different_model_shape(ws, tiny_cfg, capsys):
    pt.pretrain(ws, tiny(tiny_cfg, steps=2, checkpoint_every=2, sample_every=100))
    args = ["--workspace", str(ws.root), "--preset", "tiny", "--set", "pretrain.mixed_precision=no",
            "--set", "pretrain.steps=4"]
    assert pt_cmd.cli(args + ["--set", "pretrain.layers_per_block=2"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.layers_per_block" in err and "--restart" in err
    assert pt_cmd.cli(args) == 0                                        # more steps on the same model: resumes
    assert pt_cmd.cli(args + ["--set", "pretrain.layers_per_block=2", "--restart"]) == 0


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(ws, tiny_cfg, capsys, damaged):
    """A truncated latest checkpoint is set aside (named and kept) and the run resumes from the
    newest one that loads, through core.train.trainer.resume_step (which every trainer uses)."""
    pt.pretrain(ws, tiny(tiny_cfg, steps=4, checkpoint_every=2, sample_every=100))
    folder = ws.checkpoints_dir / "pretrain"
    with open(folder / "checkpoint-4" / damaged, "r+b") as f:
        f.truncate(1000)
    args = ["--workspace", str(ws.root), "--preset", "tiny", "--set", "pretrain.mixed_precision=no",
            "--set", "pretrain.checkpoint_every=2", "--set", "pretrain.sample_every=100"]
    assert pt_cmd.cli(args + ["--set", "pretrain.steps=6"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint-4" in err and "checkpoint-4.corrupt" in err
    assert (folder / "checkpoint-4.corrupt" / damaged).stat().st_size == 1000     # kept for inspection
    assert [s for s, _ in training.list_checkpoints(folder)] == [4, 6]
    rows = read_jsonl(ws.metrics_file("pretrain"))
    assert rows[-1]["step"] == 6


def test_every_checkpoint_unreadable_is_one_line_then_starts_over(ws, tiny_cfg, capsys):
    pt.pretrain(ws, tiny(tiny_cfg, steps=2, checkpoint_every=2, sample_every=100))
    folder = ws.checkpoints_dir / "pretrain"
    with open(folder / "checkpoint-2" / "optimizer.bin", "r+b") as f:
        f.truncate(100)
    args = ["--workspace", str(ws.root), "--preset", "tiny", "--set", "pretrain.mixed_precision=no",
            "--set", "pretrain.steps=2", "--set", "pretrain.sample_every=100"]
    assert pt_cmd.cli(args) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "Traceback" not in err
    assert pt_cmd.cli(args) == 0 and (folder / "checkpoint-2.corrupt").is_dir()


ENOSPC_TEXT = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
               'message: "No space left on device" })')


def test_full_disk_during_a_checkpoint_is_one_line_and_resumable(ws, tiny_cfg, monkeypatch, capsys):
    """safetensors' own error type wraps ENOSPC: the CLI names the folder and the cause, exits 1,
    and the previous checkpoint resumes."""
    from safetensors import SafetensorError
    real = training.Accelerator.save_state
    calls = {"n": 0}

    def filling(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            real(self, output_dir, **kw)                    # half written, then the disk is full
            raise SafetensorError(ENOSPC_TEXT)
        return real(self, output_dir, **kw)
    monkeypatch.setattr(training.Accelerator, "save_state", filling)
    args = ["--workspace", str(ws.root), "--preset", "tiny", "--set", "pretrain.mixed_precision=no",
            "--set", "pretrain.steps=4", "--set", "pretrain.checkpoint_every=2", "--set", "pretrain.sample_every=100"]
    assert pt_cmd.cli(args) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and ".checkpoint-4.tmp" in err[0] and "No space left on device" in err[0]
    folder = ws.checkpoints_dir / "pretrain"
    assert [s for s, _ in training.list_checkpoints(folder)] == [2]
    monkeypatch.setattr(training.Accelerator, "save_state", real)
    assert pt_cmd.cli(args) == 0 and ws.unet_dir.exists()


def test_read_only_workspace_on_the_model_save_is_one_line(ws, tiny_cfg, monkeypatch, capsys):
    import errno

    from core import io
    real = io.tempfile.mkdtemp

    def read_only(*a, dir=None, **k):
        if "unet" in str(k.get("prefix", "")):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(io.tempfile, "mkdtemp", read_only)
    args = ["--workspace", str(ws.root), "--preset", "tiny", "--set", "pretrain.mixed_precision=no",
            "--set", "pretrain.steps=2", "--set", "pretrain.sample_every=100"]
    assert pt_cmd.cli(args) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "Read-only file system" in err[0] and str(ws.models_dir) in err[0]
    assert training.latest_checkpoint(ws.checkpoints_dir / "pretrain")[0] == 2   # the steps are kept


def test_other_model_shape_without_lab_config_is_not_called_corrupt(ws, tiny_cfg, capsys):
    """Checkpoints whose shape check cannot run (lab_config.json missing) are intact, not corrupt:
    a size mismatch is a one-line error and nothing is renamed."""
    pt.pretrain(ws, tiny(tiny_cfg, steps=2, checkpoint_every=2, sample_every=100))
    folder = ws.checkpoints_dir / "pretrain"
    (folder / "lab_config.json").unlink()
    args = ["--workspace", str(ws.root), "--preset", "tiny", "--set", "pretrain.mixed_precision=no",
            "--set", "pretrain.steps=4", "--set", "pretrain.layers_per_block=2"]
    assert pt_cmd.cli(args) == 2
    assert "different model shape" in capsys.readouterr().err
    assert (folder / "checkpoint-2").is_dir() and not list(folder.glob("*.corrupt"))
