import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from core.cli import UserError
from core.guidance import condition_mean, condition_score, ddpm_variance, log_prob_grad


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


@pytest.mark.parametrize("steps", [10, 37, 50])
def test_condition_score_reads_alpha_bar_at_the_actual_timestep(setup, steps):
    sched, z, eps, clf, y = setup
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(steps)
    for t in ddim.timesteps[[0, steps // 2, -1]]:
        out = condition_score(eps, z, t, ddim, clf, y, 2.5)
        expected = eps - 2.5 * (1 - sched.alphas_cumprod[int(t)]).sqrt() * analytic_grad(clf, z, y)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
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
