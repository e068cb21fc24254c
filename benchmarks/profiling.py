"""Where a step's time goes: torch.profiler over a few calls, grouped into the phases the step
names with record_function (data, forward + backward, optimizer, EMA) and its operators grouped
by kind (convolution, group norm, attention, matmul, elementwise, inductor's fused kernels, ...).

Self times are summed per operator (an operator's own time, without its children), so the kinds
add up to the profiled time; on CUDA the device's self time is used (CPU time there is launch cost).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import sync

# first match wins: the order puts specific kinds before the generic ones
KINDS = (
    # a compiled region's own time (not in the extern kernels it calls: convolutions, mm) is its
    # fused kernels; with kernel names on (train_step --kernel-names) they appear one by one
    ("inductor fused kernels", ("cpp_fused", "triton_", "graph_", "kernel_cpp", "compiledfunction",
                                "torch-compiled region", "compiledfxgraph")),
    ("convolution", ("conv",)),
    ("group norm", ("group_norm", "groupnorm")),
    ("attention", ("scaled_dot_product", "flash", "attention", "softmax", "bmm")),
    ("matmul / linear", ("addmm", "aten::mm", "linear", "matmul", "gemm")),
    ("optimizer", ("adam", "_foreach_add", "_fused")),
    ("EMA / foreach", ("_foreach", "lerp")),
    ("copies / layout", ("copy_", "contiguous", "to_copy", "clone", "cat", "permute", "transpose")),
    ("random / data", ("randn", "randint", "normal_", "index", "flip", "rot90", "from_numpy")),
    ("elementwise / reduction", ("add", "mul", "sub", "div", "silu", "sigmoid", "sum", "mean", "abs", "pow",
                                 "sqrt", "where", "fill", "zero", "exp", "neg", "sign", "norm", "max", "min")),
)
WRAPPERS = ("ProfilerStep", "autograd::engine", "TorchDynamo Cache Lookup")   # bookkeeping, not work


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_step(step: Callable[[], object], calls: int, device: torch.device,
                 phase_prefix: str = "pretrain:") -> dict:
    """Profile `calls` calls of `step`: per-call wall time, the named phases, kinds and top ops."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            step()
        sync(device)
    wall_ms = (time.perf_counter() - start) / calls * 1e3
    cpu_ms = (time.process_time() - cpu_start) / calls * 1e3     # the process's own CPU time (shared machine)
    events = prof.key_averages()
    cuda = device.type == "cuda"

    def own(e) -> float:       # ms per call
        return (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3 / calls

    phases = [{"phase": e.key, "ms/step": e.cpu_time_total / 1e3 / calls,
               "% of step": 100 * e.cpu_time_total / 1e3 / calls / wall_ms}
              for e in events if e.key.startswith(phase_prefix)]
    ops = [e for e in events if not e.key.startswith(phase_prefix) and not e.key.startswith(WRAPPERS)]
    total = sum(own(e) for e in ops) or 1.0
    kinds: dict[str, float] = {}
    for e in ops:
        kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0.0) + own(e)
    kind_rows = [{"kind": k, "ms/step": v, "% of op time": 100 * v / total}
                 for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    top = sorted(ops, key=own, reverse=True)
    top_rows = [{"op": e.key[:60], "kind": kind_of(e.key), "calls/step": e.count / calls, "ms/step": own(e),
                 "% of op time": 100 * own(e) / total} for e in top]
    return {"wall_ms": wall_ms, "cpu_ms": cpu_ms, "op_ms": total, "phases": phases, "kinds": kind_rows, "top": top_rows,
            "time": "device" if cuda else "cpu"}
