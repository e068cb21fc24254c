import torch
from torch import nn

from core.evaluate.inference import _to_input
from core.train.normalization import recompute_running_stats


def test_recomputed_statistics_are_the_whole_sets_even_when_it_comes_sorted_by_class():
    """Two classes of one flat colour each, in class order: batches taken in that order would each
    hold one class and a variance near 0; the recomputed variance is the whole set's."""
    images = torch.cat([torch.full((16, 3, 8, 8), 40, dtype=torch.uint8),
                        torch.full((16, 3, 8, 8), 220, dtype=torch.uint8)])
    net = nn.Sequential(nn.BatchNorm2d(3))
    recompute_running_stats(net, images, batch=8)
    x = _to_input(images, torch.device("cpu"))
    want_mean, want_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
    norm = net[0]
    assert torch.allclose(norm.running_mean, want_mean, atol=1e-4)
    assert torch.allclose(norm.running_var, want_var, rtol=0.25), (norm.running_var, want_var)
