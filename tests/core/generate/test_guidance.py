import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from core.errors import UserError
from core.generate.guidance import condition_mean, condition_score, ddpm_variance, log_prob_grad


class Linear(torch.nn.Module):
    """logits = W flatten(z) + t-independent bias: grad log p(y) has a closed form."""

    def __init__(self, dim: int, classes: int = 3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(classes, dim))
        self.calls = 0

    def forward(self, z, t):
        self.calls += 1
        assert z.requires_grad and t.shape == (z.shape[0],)
        return z.flatten(1) @ self.w.T


def analytic_grad(clf: Linear, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(z.flatten(1) @ clf.w.T, -1)
    return (clf.w[y] - p @ clf.w).reshape(z.shape)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    sched = DDPMScheduler(beta_start=0.0015, beta_end=0.0155, beta_schedule="linear")
    z = torch.randn(4, 2, 3, 3)
    return sched, z, torch.randn_like(z), Linear(18), torch.tensor([0, 1, 2, 1])


def test_scale_zero_returns_eps_untouched_without_calling_classifier(setup):
    sched, z, eps, clf, y = setup
    out = condition_score(eps, z, torch.tensor(500), sched, clf, y, 0.0)
    assert out is eps and clf.calls == 0
    mean = torch.randn_like(z)
    assert condition_mean(mean, 0.3, z, 500, clf, y, 0) is mean and clf.calls == 0


def alpha_bars(T: int = 1000) -> torch.Tensor:
    """The fixture's alpha-bar by hand (float64), not read from diffusers."""
    return torch.cumprod(1 - torch.linspace(0.0015, 0.0155, T, dtype=torch.float64), 0)


@pytest.mark.parametrize("steps", [10, 37, 50])
@pytest.mark.parametrize("scale", [0.5, 2.5, 10.0])
def test_condition_score_reads_alpha_bar_at_the_actual_timestep(setup, steps, scale):
    sched, z, eps, clf, y = setup
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(steps)
    grad = analytic_grad(clf, z, y).double()
    for t in ddim.timesteps[[0, 1, steps // 2, -1]]:
        out = condition_score(eps, z, t, ddim, clf, y, scale)
        # per unit of scale, so float32's rounding of `out` (~1e-6 at scale 10) does not count
        shift = (eps.double() - out.double()) / scale
        torch.testing.assert_close(shift, (1 - alpha_bars()[int(t)]).sqrt() * grad, rtol=0, atol=1e-6)
    # the reference's alphas[t // 20] is a different number for anything but 50 steps
    if steps != 50:
        t = int(ddim.timesteps[1])
        assert sched.alphas_cumprod[t] != sched.alphas_cumprod[t // 20]


def test_log_prob_grad_matches_closed_form_and_stays_off_the_unet_graph(setup):
    sched, z, eps, clf, y = setup
    upstream = torch.nn.Conv2d(2, 2, 1)
    z_graph = upstream(z)                        # a tensor that still carries a "UNet" graph
    grad = log_prob_grad(z_graph, 10, clf, y)
    torch.testing.assert_close(grad, analytic_grad(clf, z_graph.detach(), y), rtol=1e-5, atol=1e-6)
    assert upstream.weight.grad is None and not grad.requires_grad
    with torch.no_grad():                        # the sampler's no_grad does not block the classifier's
        out = condition_score(eps, z, 10, sched, clf, y, 1.0)
    assert not out.requires_grad and not torch.equal(out, eps)


VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"]


def posterior_variance(kind: str, t: int, steps: int, T: int = 1000) -> float:
    """DDPM's sigma_t^2 for the jump t -> t - T // steps (diffusers' "leading" spacing), by hand."""
    ab = alpha_bars(T)
    prev = t - T // steps
    ab_prev = ab[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    beta = 1 - ab[t] / ab_prev                   # the inference schedule's beta, not betas[t]
    return float(beta if kind.startswith("fixed_large") else (1 - ab_prev) / (1 - ab[t]) * beta)


@pytest.mark.parametrize("kind", VARIANCE_TYPES)
@pytest.mark.parametrize("steps", [1000, 50, 25, 7])
def test_ddpm_variance_is_the_posterior_variance_of_the_step(kind, steps):
    sched = DDPMScheduler(beta_start=0.0015, beta_end=0.0155, beta_schedule="linear", variance_type=kind)
    sched.set_timesteps(steps)
    for t in [int(t) for t in sched.timesteps[[0, 1, len(sched.timesteps) // 2, -2]]]:
        var = float(ddpm_variance(sched, t))
        assert var == pytest.approx(posterior_variance(kind, t, steps), rel=1e-4), (t, var)
        # and it is what the step's noise is multiplied by, squared (x_t = eps = 0: mean 0)
        zero = torch.zeros(1, 2, 8, 8)
        drawn = sched.step(zero, t, zero, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(zero.shape, generator=torch.Generator().manual_seed(t))
        if kind == "fixed_large_log":            # diffusers' step takes sqrt(log beta): NaN
            assert drawn.isnan().all()
        else:
            torch.testing.assert_close(drawn, var ** 0.5 * noise, rtol=1e-4, atol=1e-6)
    assert float(ddpm_variance(sched, 0)) == 0.0
    # t = 760 of 25 steps: fixed_small_log once gave exp(std) = 1.85 where sigma^2 = 0.379
    if steps == 25 and kind.startswith("fixed_small"):
        assert float(ddpm_variance(sched, 760)) == pytest.approx(0.3787, abs=1e-4)


@pytest.mark.parametrize("kind", ["learned", "learned_range"])
def test_ddpm_variance_of_learned_types_is_a_clear_error(kind):
    sched = DDPMScheduler(variance_type=kind)
    sched.set_timesteps(10)
    with pytest.raises(UserError, match="variance_type"):
        ddpm_variance(sched, int(sched.timesteps[0]))


@pytest.mark.parametrize("kind", ["fixed_small", "fixed_small_log", "fixed_large"])
def test_guided_ddpm_step_is_the_guided_ancestral_step(setup, kind):
    """As core.generate.sampling draws it: step, then condition_mean on the noised sample."""
    _, z, eps, clf, y = setup
    steps, scale, T = 25, 3.0, 1000
    sched = DDPMScheduler(beta_start=0.0015, beta_end=0.0155, beta_schedule="linear",
                          variance_type=kind, clip_sample=False)
    sched.set_timesteps(steps)
    ab = alpha_bars(T)
    zd, ed, grad = z.double(), eps.double(), analytic_grad(clf, z, y).double()
    for t in (960, 760, 400, 40):
        ab_t, ab_prev = ab[t], ab[t - T // steps]
        beta = 1 - ab_t / ab_prev
        x0 = (zd - (1 - ab_t).sqrt() * ed) / ab_t.sqrt()
        mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * zd
        var = beta if kind == "fixed_large" else (1 - ab_prev) / (1 - ab_t) * beta
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(t)).double()
        expected = mean + scale * var * grad + var.sqrt() * noise
        out = sched.step(eps, t, z, generator=torch.Generator().manual_seed(t)).prev_sample
        guided = condition_mean(out, ddpm_variance(sched, t), z, t, clf, y, scale)
        torch.testing.assert_close(guided.double(), expected, rtol=1e-4, atol=1e-5)


def test_condition_mean_shifts_by_scaled_variance_times_grad(setup):
    sched, z, eps, clf, y = setup
    sched.set_timesteps(20)
    t = int(sched.timesteps[3])
    var = ddpm_variance(sched, t)
    assert 0 < float(var) < 1
    mean = torch.randn_like(z)
    out = condition_mean(mean, var, z, t, clf, y, 4.0)
    torch.testing.assert_close(out, mean + 4.0 * var * analytic_grad(clf, z, y), rtol=1e-5, atol=1e-6)
    assert float(ddpm_variance(sched, 0)) == 0.0


def test_negative_or_nan_scale_is_a_clear_error(setup):
    sched, z, eps, clf, y = setup
    with pytest.raises(UserError, match="guidance_scale"):
        condition_score(eps, z, 5, sched, clf, y, -1.0)
    with pytest.raises(UserError, match="guidance_scale"):
        condition_mean(eps, 0.1, z, 5, clf, y, float("nan"))
