"""The downstream / filter classifier backbone: a timm model by name, never downloaded."""
from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.layers import BatchNormAct2d, GroupNormAct

from core.errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)   # images are fed in [-1, 1] (core.data.images.to_tensor), i.e. (x - 0.5) / 0.5


GROUPS = 8      # GroupNorm groups (fewer where a layer's channels do not divide by 8)


def build_backbone(name: str, num_classes: int, pretrained_path: str | Path = "",
                   section: str = "downstream", group_norm: bool = False) -> torch.nn.Module:
    """timm model by name, never downloaded; optional local safetensors weights (head skipped
    when its shape differs, so ImageNet weights can seed a 9-class model). `section`: the config
    section the errors name. `group_norm`: every BatchNorm replaced by GroupNorm."""
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as e:   # timm raises RuntimeError("Unknown model ...")
        raise UserError(f"{section}.backbone: {e}") from None
    if group_norm:
        to_group_norm(model)
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


def to_group_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm by GroupNorm in place (a normalisation without batch statistics):
    timm's BatchNormAct2d by GroupNormAct with the same activation, a plain BatchNorm2d by
    GroupNorm. Affine parameters start fresh, as they would in a model built with GroupNorm."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BatchNormAct2d):
                norm = GroupNormAct(child.num_features, math.gcd(child.num_features, GROUPS), eps=child.eps,
                                    apply_act=False)
                norm.act, norm.drop = child.act, child.drop
            elif isinstance(child, torch.nn.BatchNorm2d):
                norm = torch.nn.GroupNorm(math.gcd(child.num_features, GROUPS), child.num_features, eps=child.eps)
            else:
                continue
            setattr(parent, name, norm)
    return model
