"""Fixtures of the trainer tests: workspaces of unlabeled pools, and one trained tiny autoencoder
shared by the pre-training and fault tests (each works on its own copy)."""
import pytest

from core.config.presets import preset
from ldm_fixtures import make_pool_workspace


@pytest.fixture
def pool_ws(tmp_path):
    """Two unlabeled pools of 6 and 4 tissue-like 32 px tiles (data/pools.csv), no models."""
    return make_pool_workspace(tmp_path, n_per_pool=(6, 4))


@pytest.fixture(scope="session")
def trained_autoencoder(tmp_path_factory):
    """Pools of 10 and 6 tiles and the tiny preset's autoencoder trained on them. Shared: copy the
    workspace before writing to it (shutil.copytree; pools.csv keeps naming these tiles)."""
    from core.train.autoencoder import train_autoencoder
    ws = make_pool_workspace(tmp_path_factory.mktemp("ae"), n_per_pool=(10, 6))
    train_autoencoder(ws, preset("tiny"))
    return ws
