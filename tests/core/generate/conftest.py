"""Fixtures of the sampling-side tests."""
import pytest
import torch

from core.models import build_classifier
from ldm_fixtures import make_model_workspace


@pytest.fixture
def ws(tmp_path, tiny_cfg):
    ws = make_model_workspace(tmp_path / "ws", tiny_cfg)
    torch.manual_seed(1)
    build_classifier(tiny_cfg, ["tumor", "stroma"], 4, 1000).save_pretrained(ws.latent_classifier_dir)
    return ws
