import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_cfg():
    from core.config.presets import preset
    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory):
    """A workspace holding the bundled demo data built for the tiny preset (32 px at 2 um/px):
    data/splits.csv + classes.json (skin: 4 classes, train/val/test) and data/pools.csv (two
    unlabeled pools); its config.json is the tiny preset. Built once per session (~1.5 s).
    Shared by every test in the session: write models/results into it, never change data/."""
    from core.config.store import save_config
    from core.config.presets import preset
    from core.data.demo import build_demo
    from core.workspace import Workspace
    ws = Workspace(tmp_path_factory.mktemp("tiny_ws")).ensure()
    cfg = preset("tiny")
    build_demo(ws, cfg)
    save_config(cfg, ws.root)
    return ws
