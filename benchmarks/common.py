"""Shared benchmark helpers: matmul peak, FLOP counting, timing, markdown tables."""
from __future__ import annotations

import os
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def device_name(device: torch.device) -> str:
    """The card's name, or the CPU's model with its bf16 matmul flags, cores and torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model, flags = "CPU", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:         # not Linux: the model stays unnamed
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return (f"{model} ({', '.join(native) or 'no native bf16'}; {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads)")


def load_note() -> str:
    """The 1-minute load average against the cores: a shared machine's wall times are slower."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, repeats: int = 5,
                device: torch.device | str = "cpu") -> float:
    """Achieved FLOP/s of an n x n x n matmul in `dtype` (best of `repeats`): the roofline we
    compare training steps against. On GPU pass a larger n (e.g. 8192)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs torch's FlopCounterMode sees for one call (forward + backward if fn does both)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_steps(fn: Callable[[], object], steps: int, warmup: int = 2,
               device: torch.device | str = "cpu") -> float:
    """Median seconds per call after `warmup` untimed calls (the median resists other load)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
