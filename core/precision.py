"""What a config precision ("no" | "bf16" | "fp16") runs as on a device, and autocast for loops
outside an Accelerator (sampling, inference). Apart from core.train.trainer so that inference code
reads it without the trainer scaffold."""
from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """Native bf16 on this CPU (AVX-512 BF16 or AMX). Without it torch emulates bf16: on a 2-core
    AVX2 EPYC a bf16-autocast UNet forward took 45x, a latent-classifier step 15x and a MobileNet
    step 5x the fp32 time (measured), so reduced precision would only cost time there."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:      # a torch without the probes: keep what the config asks
        return True


def effective_precision(device: torch.device | str, precision: str) -> str:
    """What a config precision runs as on `device`: reduced precision on a CPU without native
    bf16 runs in fp32 (a speed choice of the machine, like GPU vs CPU kernels; the config and
    the stage keys stay as written)."""
    if torch.device(device).type == "cpu" and precision in ("bf16", "fp16") and not cpu_has_fast_bf16():
        _warn_once()
        return "no"
    return precision


_WARNED = []


def _warn_once() -> None:
    if not _WARNED:
        _WARNED.append(True)
        import warnings
        warnings.warn("this CPU has no native bf16 (AVX-512 BF16 / AMX): reduced-precision settings run in "
                      "fp32, which is many times faster here", RuntimeWarning, stacklevel=3)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a config precision ("no" | "bf16" | "fp16") on `device`; None: fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(effective_precision(device, precision))
    if device.type == "cpu" and dtype is torch.float16:
        dtype = torch.bfloat16  # fp16 autocast on CPU is slow; bf16 is the CPU's fast type
    return dtype


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """torch.autocast for a config precision, for loops that run outside an Accelerator."""
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
