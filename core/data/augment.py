"""H&E training augmentation on whole batches: the 8 dihedral symmetries and stain (HED) jitter.

Every draw comes from the generator passed in, one set of parameters per image, so two runs that
feed the same images with the same generator state get the same pixels (the grid gives each arm
the same real batches, augmented alike). Vectorised over the batch: per-image torchvision calls
cost more than a MobileNet step on 2 CPU cores.

The HED matrices are Ruifrok & Johnston's stain vectors as scikit-image's `rgb2hed` uses them,
written out here because scikit-image is not in the stack for three rows of constants.
"""
from __future__ import annotations

import torch

# rows: the optical density (OD) of haematoxylin, eosin and DAB per unit stain, in R, G, B
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],
                             [0.07, 0.99, 0.11],
                             [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_MIN_LIGHT = 1e-6      # transmitted light floor: OD = -log(light) stays finite on black pixels


def dihedral(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of (N, C, H, W) turned by k * 90 degrees and flipped or not (tissue has no
    canonical orientation); returns (images, the symmetry index 0..7 per image)."""
    code = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.where((code >= 4).view(-1, 1, 1, 1), x.flip(-1), x)
    turned = out.clone()
    for k in (1, 2, 3):
        pick = (code % 4) == k
        if pick.any():
            turned[pick] = torch.rot90(out[pick], k, dims=(-2, -1))
    return turned, code


def rgb_to_hed(light: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) transmitted light in [0, 1] -> stain amounts (N, 3, H, W) in OD units."""
    od = -torch.log(light.clamp(min=_MIN_LIGHT))
    return torch.einsum("nchw,cd->ndhw", od, HED_FROM_RGB.to(od))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    od = torch.einsum("nchw,cd->ndhw", hed, RGB_FROM_HED.to(hed))
    return torch.exp(-od).clamp(0, 1)


def hed_jitter(light: torch.Tensor, generator: torch.Generator, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stain jitter after Tellez et al. (2018): per image and stain, amount * a + b with a in
    [1 - s, 1 + s] and b in [-s, s] OD. Multiplicative terms vary how much stain took,
    additive ones tint glass and tissue alike, as another lab's protocol or scanner does.
    Returns (jittered light in [0, 1], the (N, 6) parameters a, b)."""
    n = light.shape[0]
    if strength <= 0:
        return light, torch.zeros(n, 6)
    a = 1 + (torch.rand(n, 3, generator=generator) * 2 - 1) * strength
    b = (torch.rand(n, 3, generator=generator) * 2 - 1) * strength
    hed = rgb_to_hed(light.double())
    out = hed * a.double().view(n, 3, 1, 1) + b.double().view(n, 3, 1, 1)
    return hed_to_rgb(out).to(light.dtype), torch.cat([a, b], dim=1)



def he_augment(batch_u8: torch.Tensor, generator: torch.Generator, stain: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) -> float in [-1, 1], dihedral + HED jitter; returns (images, the
    parameters drawn per image: symmetry and a, b) so a run can fingerprint what it trained on."""
    light = batch_u8.float().div_(255.0)
    light, code = dihedral(light, generator)
    light, params = hed_jitter(light, generator, stain)
    return light.mul_(2.0).sub_(1.0), torch.cat([code.unsqueeze(1).float(), params], dim=1)
