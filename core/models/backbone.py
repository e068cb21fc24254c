"""The downstream / filter classifier backbone: a timm model by name, never downloaded."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

from core.errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)   # images are fed in [-1, 1] (core.data.images.to_tensor), i.e. (x - 0.5) / 0.5


def build_backbone(name: str, num_classes: int, pretrained_path: str | Path = "",
                   section: str = "downstream") -> torch.nn.Module:
    """timm model by name, never downloaded; optional local safetensors weights (head skipped
    when its shape differs, so ImageNet weights can seed a 9-class model). `section`: the config
    section the errors name."""
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as e:   # timm raises RuntimeError("Unknown model ...")
        raise UserError(f"{section}.backbone: {e}") from None
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise UserError(f"{section}.pretrained_path: no file at {path}")
        if path.suffix != ".safetensors":
            raise UserError(f"{section}.pretrained_path must be a .safetensors file (no pickle), got {path}")
        state = load_file(str(path))
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise UserError(f"{section}.pretrained_path: no tensor in {path} matches backbone {name!r}")
        model.load_state_dict(usable, strict=False)
    return model
