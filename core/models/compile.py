"""Speed helpers for running the models: `torch.compile` with an eager fallback, and the
attention processor that compiles best at short sequences on CPU."""
from __future__ import annotations

import contextlib
import copy
import time
import warnings

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

# What torch.compile prints that a user of the lab cannot act on (Dynamo tracing through a
# library's lru_cache: once per cached function, dozens per `core run`): kept out of user logs
KNOWN_NOISE = (r"Dynamo detected a call to a `functools\.lru_cache`-wrapped function",)
for _pattern in KNOWN_NOISE:
    warnings.filterwarnings("ignore", message=_pattern)


class CompiledOrEager:
    """`torch.compile(module)` that falls back to the eager module, once and with a warning, when
    compiling fails (no C++ compiler for inductor on CPU, an op it cannot trace, a torch whose
    `torch.compile` refuses this Python): compiling is a speed setting, never a reason to lose a
    sampling or training run. Errors of the call itself (bad shapes) still raise, from the eager
    module. `module` may also be a function of modules (the autoencoder's encode, decode).

    `training=True` compiles the backward with the forward (torch compiles it lazily, at the first
    `backward()`, where a failure could no longer be answered by running the forward eagerly), so
    the first call's `first_call_s` holds the whole compile time. The compiled callable shares
    the module's parameters and is never saved: state dicts keep their keys (no `_orig_mod.`).
    """

    def __init__(self, module, options: dict | None = None, training: bool = False):
        self.module, self.failed, self.training = module, None, training
        self.first_call_s: float | None = None
        try:
            self.compiled = torch.compile(module, dynamic=False, options=options)
        except Exception as err:  # noqa: BLE001 - e.g. "Dynamo is not supported on Python 3.x"
            self._fall_back(err)

    @property
    def name(self) -> str:
        return getattr(self.module, "__qualname__", type(self.module).__name__)

    def _fall_back(self, err: Exception) -> None:
        self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        warnings.warn(f"torch.compile of {self.name} failed ({self.failed}); running it eagerly",
                      RuntimeWarning, stacklevel=3)

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            start = time.perf_counter()
            try:
                with _backward_now(self.training):
                    out = self.compiled(*args, **kwargs)
                if self.first_call_s is None:
                    self.first_call_s = time.perf_counter() - start
                return out
            except Exception as err:  # noqa: BLE001 - any compile failure means "run eagerly"
                self._fall_back(err)
        return self.module(*args, **kwargs)


def _backward_now(training: bool):
    """AOTAutograd's switch that compiles the backward graph with the forward; a no-op context
    where this torch lacks it (the backward then compiles lazily, as torch's default)."""
    try:
        from torch._functorch import config
    except ImportError:
        config = None
    if not training or not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


def compilable(module: torch.nn.Module) -> torch.nn.Module:
    """On CPU, a copy whose attention layers use `ShortSequenceAttnProcessor`. A copy, so the
    eager module the app previews with keeps its processors. On CUDA the module is used as is."""
    if module.device.type != "cpu":
        return module
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, Attention):
            layer.set_processor(ShortSequenceAttnProcessor())
    return module


class ShortSequenceAttnProcessor:
    """diffusers' classic processor (bmm + softmax, which inductor fuses) for short sequences,
    SDPA for long ones. On CPU the SDPA flash kernel is slow at the demo's shapes (8-dim heads on
    16-64 tokens): compiled, the classic one made the UNet forward ~4% and the classifier's
    forward + backward 5-15% faster (5 interleaved rounds each). It holds the whole
    attention matrix (batch x heads x N^2), so past MAX_TOKENS SDPA stays."""

    MAX_TOKENS = 256

    def __init__(self):
        self.classic, self.sdpa = AttnProcessor(), AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None) -> torch.Tensor:
        # the keyword names are diffusers' processor signature: Attention.forward inspects them
        shape = hidden_states.shape
        tokens = shape[2] * shape[3] if hidden_states.ndim == 4 else shape[1]
        processor = self.classic if tokens <= self.MAX_TOKENS else self.sdpa
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
