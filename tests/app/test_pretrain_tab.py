"""Pre-training tab: start, live status and metrics, stop within a step, resume, fresh start."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from app import tab_pretrain
from app.context import AppContext
from core.errors import UserError


@pytest.fixture
def pretrain_ctx(tmp_path, lab_cfg):
    import torch
    from core.models import build_autoencoder
    from core.config.store import save_config
    from core.data.demo import build_demo
    ctx = AppContext.create(tmp_path / "ws", preset_name="tiny")
    build_demo(ctx.workspace, ctx.config)
    save_config(ctx.config, ctx.workspace.root)
    torch.manual_seed(0)
    build_autoencoder(ctx.config.autoencoder).save_pretrained(ctx.workspace.autoencoder_dir)
    return ctx


FIELDS = {"steps": 4, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 2, "sample_every": 2}


def test_a_job_after_another_precision_still_starts(pretrain_ctx):
    """A previous stage's Accelerator (other mixed precision) must not block the next job."""
    from accelerate import Accelerator
    Accelerator(mixed_precision="no", cpu=True)            # what an earlier fp32 stage leaves behind
    tab_pretrain.start_pretrain(pretrain_ctx, "tiny", {**FIELDS, "steps": 1}, fresh=False)
    status = pretrain_ctx.runner.wait(120)
    assert status["state"] == "done", status["traceback"]


def _wait(pred, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end and not pred():
        time.sleep(0.05)
    return pred()


def test_start_stop_resume_and_fresh(pretrain_ctx):
    ctx = pretrain_ctx
    status_md, _, step_md, fig, sample = tab_pretrain.refresh(ctx)
    assert "No pre-training run" in step_md and sample is None
    with pytest.raises(UserError, match="pretrain.steps must be > 0"):
        tab_pretrain.start_pretrain(ctx, "tiny", {**FIELDS, "steps": 0}, fresh=False)

    # a longer run is stopped within a step and resumes from its checkpoint
    tab_pretrain.start_pretrain(ctx, "tiny", {**FIELDS, "steps": 400, "checkpoint_every": 400}, fresh=False)
    # the latent cache reports progress first; wait for optimizer steps
    assert _wait(lambda: ctx.runner.status()["last"].get("stage") == "pretrain"
                 and ctx.runner.status()["step"] >= 3), ctx.runner.status()["traceback"]
    assert "ETA" in tab_pretrain.refresh(ctx)[2]
    with pytest.raises(UserError, match="'pretrain' is running"):
        tab_pretrain.start_pretrain(ctx, "tiny", FIELDS, fresh=False)
    ctx.runner.stop()
    stopped = ctx.runner.wait(60)
    assert stopped["state"] == "stopped" and stopped["step"] < 400
    stopped_at = tab_pretrain.latest_checkpoint(ctx)
    assert stopped_at is not None and tab_pretrain._step_of(stopped_at) >= 3
    msg = tab_pretrain.start_pretrain(ctx, "tiny", {**FIELDS, "steps": tab_pretrain._step_of(stopped_at) + 2},
                                      fresh=False)
    assert msg.startswith("resuming")
    assert ctx.runner.wait(120)["state"] == "done"
    status_md, _, step_md, fig, sample = tab_pretrain.refresh(ctx)
    last = tab_pretrain._step_of(stopped_at) + 2
    assert int(tab_pretrain.read_metrics(ctx)["step"].max()) == last and f"step **{last}**" in step_md
    assert len(fig.data) == 3 and list(fig.data[0].x)[-1] == last      # loss, lr, images/s curves
    assert tab_pretrain._step_of(Path(sample)) == last                 # the latest sample grid

    # a fresh start archives (never deletes) the previous run
    msg = tab_pretrain.start_pretrain(ctx, "tiny", {**FIELDS, "steps": 2}, fresh=True)
    assert "archived" in msg
    assert ctx.runner.wait(120)["state"] == "done"
    archived = list((ctx.workspace.root / "archive").glob("pretrain-*"))
    assert archived and (archived[0] / "metrics" / "pretrain.jsonl").exists()
    assert (archived[0] / "checkpoints" / "pretrain").is_dir()
    assert int(tab_pretrain.read_metrics(ctx)["step"].max()) == 2


def test_fresh_start_while_running_moves_nothing(tmp_path):
    """'Start fresh' takes the compute slot before it archives: a busy slot leaves every file put."""
    import threading
    ctx = AppContext.create(tmp_path / "ws", preset_name="tiny")
    ws = ctx.workspace
    ckpt = ws.checkpoints_dir / "pretrain" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    ws.metrics_file("pretrain").parent.mkdir(parents=True, exist_ok=True)
    ws.metrics_file("pretrain").write_text('{"step": 2}\n')
    (ws.samples_dir / "pretrain").mkdir(parents=True)
    release = threading.Event()
    ctx.runner.start("pretrain", lambda progress, stop: release.wait(30))
    try:
        with pytest.raises(UserError, match="'pretrain' is running"):
            tab_pretrain.start_pretrain(ctx, "tiny", FIELDS, fresh=True)
        assert ckpt.is_dir() and ws.metrics_file("pretrain").exists() and (ws.samples_dir / "pretrain").is_dir()
        assert not (ws.root / "archive").exists()
    finally:
        release.set()
        ctx.runner.wait(30)


def test_quarantined_checkpoint_is_not_the_latest(tmp_path):
    ctx = AppContext.create(tmp_path / "ws", preset_name="tiny")
    folder = ctx.workspace.checkpoints_dir / "pretrain"
    (folder / "checkpoint-190").mkdir(parents=True)
    (folder / "checkpoint-200.corrupt").mkdir()
    assert tab_pretrain.latest_checkpoint(ctx).name == "checkpoint-190"
