"""Reduced precision only where the CPU has native bf16; elsewhere fp32 (emulated bf16 is 5-45x slower)."""
import pytest
import torch

import core.precision as precision
import core.train.trainer as training


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_follows_native_bf16(monkeypatch, native):
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


def _fit(tmp_path, cfg=None, steps=4, stop_at=None, **spec):
    """A toy model through the scaffold; returns (result, [(step, lr) seen by progress])."""
    import threading
    spec = training.TrainSpec(stage="toy", steps=steps, seed=0, precision="no", batch_size=2,
                              ckpt_dir=tmp_path / "ckpt", checkpoint_every=2, metrics_file=tmp_path / "m.jsonl",
                              log_every=2, **spec)
    trainer = training.Trainer(spec, cfg)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = trainer.prepare(model, opt)
    seen, stop = [], threading.Event()

    def step_fn(step):
        loss = model(torch.ones(2, 2)).pow(2).mean()
        trainer.acc.backward(loss)
        opt.step()
        opt.zero_grad()
        return loss, {"extra": step}

    def progress(p):
        seen.append((p["step"], trainer.lr))
        if p["step"] == stop_at:
            stop.set()
    result = trainer.run(step_fn, progress=progress, stop=stop)
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
