"""Classifier guidance as pure functions (guided-diffusion's condition_score / condition_mean).

diffusers has no classifier guidance, so these are written here. Unlike the reference
implementation (`alphas[t // 20]`, right only for 50 DDIM steps), alpha-bar is read from the
scheduler at the ACTUAL timestep, so any step count, eta and scheduler work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.errors import UserError


def check_scale(scale: float) -> float:
    scale = float(scale)
    if not scale >= 0:  # also rejects NaN
        raise UserError(f"guidance_scale must be >= 0, got {scale}")
    return scale


def check_interval(interval) -> tuple[int, int] | None:
    """A guidance interval as (t_lo, t_hi) timesteps, or None for every timestep (also for ())."""
    if interval is None or len(interval) == 0:
        return None
    try:
        lo, hi = (int(v) for v in interval)
    except (TypeError, ValueError) as e:
        raise UserError(f"guidance_interval must be two whole timesteps LO,HI, got {interval!r}") from e
    if not 0 <= lo <= hi or (lo, hi) != tuple(interval):
        raise UserError(f"guidance_interval must be whole timesteps 0 <= LO <= HI, got {interval!r}")
    return lo, hi


def scale_at(t: torch.Tensor | int, scale: float, interval: tuple[int, int] | None) -> float:
    """The guidance scale at timestep t: `scale` inside [t_lo, t_hi] (both ends included; None:
    everywhere), 0 outside, where condition_score / condition_mean then skip the classifier.
    Kynkaanniemi et al. 2024: guidance limited to an interval of noise levels improves samples
    and saves the guidance cost outside it."""
    if interval is None:
        return scale
    return scale if interval[0] <= int(t) <= interval[1] else 0.0


def log_prob_grad(z_t: torch.Tensor, t: torch.Tensor | int, classifier: torch.nn.Module, y: torch.Tensor,
                  autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """grad_z log p(y | z_t, t), through the classifier only (z_t is detached from any UNet graph)."""
    z = z_t.detach().float().requires_grad_(True)
    t = torch.as_tensor(t, device=z.device).reshape(-1).expand(z.shape[0]) if not torch.is_tensor(t) or t.numel() == 1 \
        else t.to(z.device)
    with torch.enable_grad():
        with torch.autocast(z.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits = classifier(z, t)
        log_p = F.log_softmax(logits.float(), dim=-1)
        selected = log_p[torch.arange(len(y), device=z.device), y.to(z.device)]
        (grad,) = torch.autograd.grad(selected.sum(), z)
    return grad


def alpha_bar(scheduler, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod at timestep(s) t, shaped to broadcast over `like` (N, C, H, W)."""
    t_idx = torch.as_tensor(t, device="cpu").long().reshape(-1)
    a = scheduler.alphas_cumprod[t_idx].to(device=like.device, dtype=like.dtype)
    return a.reshape(-1, *([1] * (like.dim() - 1)))


def condition_score(eps: torch.Tensor, z_t: torch.Tensor, t, scheduler, classifier, y: torch.Tensor,
                    scale: float, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """eps' = eps - scale * sqrt(1 - alpha_bar_t) * grad log p(y | z_t, t)  (for DDIM / any eps sampler).

    scale == 0 returns `eps` itself, untouched, without calling the classifier.
    """
    scale = check_scale(scale)
    if scale == 0:
        return eps
    grad = log_prob_grad(z_t, t, classifier, y, autocast_dtype)
    return eps - scale * (1 - alpha_bar(scheduler, t, eps)).sqrt() * grad.to(eps.dtype)


def condition_mean(mean: torch.Tensor, variance: torch.Tensor | float, z_t: torch.Tensor, t, classifier,
                   y: torch.Tensor, scale: float, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """mean' = mean + scale * variance * grad log p(y | z_t, t)  (ancestral DDPM step, Dhariwal & Nichol).

    Because the shift is additive, passing the already-noised sample as `mean` gives the same
    draw as sampling from the shifted mean with the same noise.
    """
    scale = check_scale(scale)
    if scale == 0:
        return mean
    grad = log_prob_grad(z_t, t, classifier, y, autocast_dtype)
    variance = torch.as_tensor(variance, device=mean.device, dtype=mean.dtype)
    return mean + scale * variance * grad.to(mean.dtype)


# How DDPMScheduler.step (diffusers 0.42) turns _get_variance(t) into its noise's std: the `_log`
# types do not share a convention, so each one's value is mapped back to the variance sigma^2.
_TO_VARIANCE = {
    "fixed_small": lambda v: v,               # step: v ** 0.5
    "fixed_small_log": lambda v: v ** 2,      # returns exp(0.5 log v), a std; step: v itself
    "fixed_large": lambda v: v,               # beta_t; step: v ** 0.5
    # log(beta_t): step's (log beta_t) ** 0.5 is NaN there, so the variance meant (beta_t) is returned
    "fixed_large_log": lambda v: v.exp(),
}


def ddpm_variance(scheduler, t: int) -> torch.Tensor:
    """sigma_t^2 of the DDPM step at timestep t: what `DDPMScheduler.step` multiplies its noise by, squared.

    _get_variance reads the previous timestep of the scheduler's inference schedule (set_timesteps),
    so with fewer steps than training steps this is the variance of the jump t -> prev(t), the one
    the step at t draws with. The learned types need the model's variance output: a clear error.
    """
    if int(t) <= 0:
        return torch.tensor(0.0)                 # step adds no noise at t = 0
    kind = str(scheduler.config.variance_type)
    if kind not in _TO_VARIANCE:
        raise UserError(f"classifier guidance with the DDPM scheduler supports variance_type "
                        f"{', '.join(_TO_VARIANCE)}; got {kind!r} (its variance needs the model's output)")
    return _TO_VARIANCE[kind](scheduler._get_variance(int(t)).detach().float().cpu())
