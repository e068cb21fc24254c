"""The trainer scaffold (core.train.trainer) on a toy model: precision, the warm-up rule, metrics,
resume, the NaN guard, the shape guard and corrupt checkpoints. Every trainer runs through it, so
these are its specs; the trainers' own tests show it in place."""
import pytest
import torch
from safetensors.torch import load_file

import core.precision as precision
import core.train.trainer as training
from core.config.checks import apply_overrides
from core.errors import TrainingDiverged, UserError


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_follows_native_bf16(monkeypatch, native):
    """Reduced precision only where the CPU has native bf16; elsewhere fp32 (emulated bf16 is 5-45x slower)."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert precision.autocast_dtype(cpu, "bf16") == (torch.bfloat16 if native else None)
    assert precision.autocast_dtype(cpu, "fp16") == (torch.bfloat16 if native else None)
    assert precision.autocast_dtype(cpu, "no") is None
    assert training.make_accelerator("bf16", 1, "/tmp/acc-test", 0).mixed_precision == ("bf16" if native else "no")
    with precision.autocast(cpu, "bf16"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    # a GPU keeps what the config asks, whatever the host CPU
    assert precision.effective_precision("cuda", "bf16") == "bf16"


def _fit(tmp_path, cfg=None, steps=4, stop_at=None, width=1, nan_at=None, **spec):
    """A toy model (Linear(2, width)) through the scaffold; returns (result, [(step, lr) seen by
    progress]). `nan_at`: the 0-based step whose loss is NaN."""
    import threading
    spec = training.TrainSpec(stage="toy", steps=steps, seed=0, precision="no", batch_size=2,
                              ckpt_dir=tmp_path / "ckpt", checkpoint_every=2, metrics_file=tmp_path / "m.jsonl",
                              log_every=2, **spec)
    trainer = training.Trainer(spec, cfg)
    model = torch.nn.Linear(2, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = trainer.prepare(model, opt)
    seen, stop = [], threading.Event()

    def step_fn(step):
        loss = model(torch.ones(2, 2)).pow(2).mean()
        if step == nan_at:
            loss = loss * float("nan")
        trainer.acc.backward(loss)
        opt.step()
        opt.zero_grad()
        return loss, {"extra": step}

    def progress(p):
        seen.append((p["step"], trainer.lr))
        if p["step"] == stop_at:
            stop.set()
    try:
        result = trainer.run(step_fn, progress=progress, stop=stop)
    finally:
        trainer.end()
    return result, seen


def test_scaffold_warmup_rule_and_metrics(tmp_path):
    # diffusers' linear schedule with 2 warm-up steps over 4, stepped once per optimizer step
    _, seen = _fit(tmp_path / "a", schedule="linear", warmup_steps=2)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert [lr for _, lr in seen] == pytest.approx([0.05, 0.1, 0.05, 0.0])
    _, seen = _fit(tmp_path / "b")                        # constant without warm-up: no schedule
    assert [lr for _, lr in seen] == [0.1] * 4
    from core.io import read_jsonl
    rows = read_jsonl(tmp_path / "b" / "m.jsonl")
    assert [(r["step"], r["extra"]) for r in rows] == [(2, 1), (4, 3)]   # step_fn's extras, 0-based
    assert all(r["loss"] > 0 and r["lr"] == 0.1 for r in rows)


def test_scaffold_resumes_its_own_run_and_drops_another_runs_checkpoints(tmp_path):
    result, _ = _fit(tmp_path, run_key="budget-a", stop_at=3)
    assert result["stopped"] and [s for s, _ in training.list_checkpoints(tmp_path / "ckpt")] == [3]
    _, seen = _fit(tmp_path, run_key="budget-a")
    assert [s for s, _ in seen] == [4]                    # resumed after checkpoint-3
    _, seen = _fit(tmp_path, run_key="budget-b", steps=2)
    assert [s for s, _ in seen] == [1, 2]                 # another run's progress is not resumed


def _checkpoint_bytes(folder):
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_nan_loss_stops_with_training_diverged_naming_the_step_and_last_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5; training stopped \(last good "
                                               r"checkpoint: .*checkpoint-4\)"):
        _fit(tmp_path, steps=6, nan_at=4, total_limit=3)
    folder = tmp_path / "ckpt"
    assert [s for s, _ in training.list_checkpoints(folder)] == [2, 4]    # nothing saved of the bad step
    assert not list(folder.glob(".checkpoint-*"))
    weights = load_file(folder / "checkpoint-4" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    from core.io import read_jsonl
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == [2, 4]


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"at step 1; .*no checkpoint was written yet"):
        _fit(tmp_path, steps=4, nan_at=0)
    assert training.list_checkpoints(tmp_path / "ckpt") == []


def test_reshaped_model_refuses_to_resume_naming_the_field_and_restart(tmp_path, tiny_cfg):
    """The shape guard reads the config saved beside the checkpoints: a run whose model is built
    from other shape fields is refused before anything loads, and the checkpoints stay as they were."""
    shape = ("pretrain", ("layers_per_block",))
    _fit(tmp_path, tiny_cfg, steps=2, width=tiny_cfg.pretrain.layers_per_block, shape=shape)
    folder = tmp_path / "ckpt"
    before = _checkpoint_bytes(folder)
    wider = apply_overrides(tiny_cfg, ["pretrain.layers_per_block=3"])
    with pytest.raises(UserError, match=r"different pretrain\.layers_per_block; rerun with --restart"):
        _fit(tmp_path, wider, steps=4, width=3, shape=shape)
    assert _checkpoint_bytes(folder) == before                            # nothing deleted or renamed
    # fields outside the shape (steps, lr) may change: the same model resumes
    faster = apply_overrides(tiny_cfg, ["pretrain.lr=0.5"])
    _, seen = _fit(tmp_path, faster, steps=4, width=tiny_cfg.pretrain.layers_per_block, shape=shape)
    assert [s for s, _ in seen] == [3, 4]


def test_reshaped_model_without_a_saved_config_is_refused_not_called_corrupt(tmp_path):
    """Without the config beside them the guard cannot run; load_state's size mismatch is then
    the same one-line refusal, and the intact checkpoint is never set aside as corrupt."""
    _fit(tmp_path, steps=2, width=1)
    folder = tmp_path / "ckpt"
    before = _checkpoint_bytes(folder)
    with pytest.raises(UserError, match=r"checkpoint-2 was made by a different model shape; rerun with --restart"):
        _fit(tmp_path, steps=4, width=3)
    assert _checkpoint_bytes(folder) == before and not list(folder.glob("*.corrupt"))


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin"])
def test_corrupt_checkpoint_is_quarantined_and_the_run_resumes_from_the_previous(tmp_path, capsys, damaged):
    """model.safetensors: its header does not read (found before loading); optimizer.bin: load_state
    fails midway. Either way the checkpoint is kept as *.corrupt, named once on stderr, and the
    previous checkpoint's state is what training continues from."""
    _fit(tmp_path / "whole", steps=6, total_limit=3)
    _fit(tmp_path, steps=4, total_limit=3)
    folder = tmp_path / "ckpt"
    with open(folder / "checkpoint-4" / damaged, "r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    _, seen = _fit(tmp_path, steps=6, total_limit=3)
    assert [s for s, _ in seen] == [3, 4, 5, 6]                           # resumed after checkpoint-2
    err = capsys.readouterr().err
    assert "checkpoint-4" in err and "kept as checkpoint-4.corrupt" in err
    assert (folder / "checkpoint-4.corrupt" / damaged).stat().st_size == 100      # kept for inspection
    assert [s for s, _ in training.list_checkpoints(folder)] == [2, 4, 6]
    # the previous checkpoint's weights were loaded: the end state is an uninterrupted run's
    resumed = load_file(folder / "checkpoint-6" / "model.safetensors")
    whole = load_file(tmp_path / "whole" / "ckpt" / "checkpoint-6" / "model.safetensors")
    for k, v in whole.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0)


def test_every_checkpoint_unreadable_starts_over_keeping_them_all(tmp_path, capsys):
    _fit(tmp_path, steps=4, total_limit=3)
    folder = tmp_path / "ckpt"
    for step in (2, 4):
        with open(folder / f"checkpoint-{step}" / "model.safetensors", "r+b") as f:
            f.truncate(100)
    _, seen = _fit(tmp_path, steps=2, total_limit=3)
    assert [s for s, _ in seen] == [1, 2]
    assert sorted(p.name for p in folder.glob("*.corrupt")) == ["checkpoint-2.corrupt", "checkpoint-4.corrupt"]
    assert capsys.readouterr().err.count("warning: skipped") == 2
