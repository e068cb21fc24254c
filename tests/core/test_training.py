"""Reduced precision only where the CPU has native bf16; elsewhere fp32 (emulated bf16 is 5-45x slower)."""
import pytest
import torch

import core.training as training


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert training.autocast_dtype(cpu, "bf16") == (torch.bfloat16 if native else None)
    assert training.autocast_dtype(cpu, "fp16") == (torch.bfloat16 if native else None)
    assert training.autocast_dtype(cpu, "no") is None
    assert training.make_accelerator("bf16", 1, "/tmp/acc-test", 0).mixed_precision == ("bf16" if native else "no")
    with training.autocast(cpu, "bf16"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    # a GPU keeps what the config asks, whatever the host CPU
    assert training.effective_precision("cuda", "bf16") == "bf16"
