import os

import numpy as np
import pytest
import torch

from core import models
from core.train import latent_cache as lat
from core.data.images import load_rgb, to_tensor
from ldm_fixtures import make_pool_workspace


@pytest.fixture
def ws_vae(tmp_path, tiny_cfg):
    ws = make_pool_workspace(tmp_path, n_per_pool=(5, 4))
    torch.manual_seed(0)
    vae = models.build_autoencoder(tiny_cfg.autoencoder).eval()
    vae.register_to_config(scaling_factor=0.7)
    paths = sorted(str(p) for p in ws.unlabeled_dir.rglob("*.png"))
    return ws, vae, paths


def test_cache_matches_encode_and_is_reused(ws_vae, monkeypatch):
    ws, vae, paths = ws_vae
    cache = lat.latent_cache(ws, vae, paths, 32, batch_size=4)
    assert isinstance(cache, np.memmap) and cache.shape == (9, 4, 8, 8)
    assert list(cache.kept) == list(range(9)) and cache.skipped == {}
    x = torch.stack([to_tensor(load_rgb(p), 32) for p in paths[:3]])
    with torch.no_grad():
        np.testing.assert_allclose(cache[:3], models.encode(vae, x).numpy(), rtol=1e-4, atol=1e-5)
    # same data + same model: nothing is encoded again
    monkeypatch.setattr(lat, "_encode_to", lambda *a, **k: pytest.fail("cache was rebuilt"))
    again = lat.latent_cache(ws, vae, paths, 32)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(cache))
    assert len(list(ws.cache_dir.glob("latents-*.npy"))) == 1


def test_cache_key_follows_data_and_model(ws_vae):
    ws, vae, paths = ws_vae
    lat.latent_cache(ws, vae, paths, 32)
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))      # a retouched tile
    lat.latent_cache(ws, vae, paths, 32)
    with torch.no_grad():
        next(vae.parameters()).add_(0.01)                                   # another autoencoder
    lat.latent_cache(ws, vae, paths, 32)
    lat.latent_cache(ws, vae, paths[:4], 32)                                # another file list
    assert len(list(ws.cache_dir.glob("latents-*.npy"))) == 4
    assert not list(ws.cache_dir.glob(".*tmp"))


def test_corrupt_files_are_skipped_and_listed(ws_vae):
    ws, vae, paths = ws_vae
    bad = ws.root / "broken.png"
    bad.write_bytes(b"not a png at all")
    cache = lat.latent_cache(ws, vae, paths[:3] + [str(bad)] + paths[3:5], 32)
    assert cache.shape[0] == 5 and list(cache.kept) == [0, 1, 2, 4, 5]
    assert list(cache.skipped) == [str(bad)] and "unreadable" in cache.skipped[str(bad)]


def test_stop_leaves_no_cache(ws_vae):
    import threading
    ws, vae, paths = ws_vae
    stop = threading.Event()
    stop.set()
    assert lat.latent_cache(ws, vae, paths, 32, stop=stop) is None
    assert not list(ws.cache_dir.glob("*.npy")) if ws.cache_dir.exists() else True


def test_augment_uses_all_eight_symmetries_and_keeps_values():
    z = torch.arange(64 * 16, dtype=torch.float32).reshape(64, 1, 4, 4)
    out = lat.augment(z, torch.Generator().manual_seed(0))
    seen = set()
    for a, b in zip(z, out):
        assert sorted(a.flatten().tolist()) == sorted(b.flatten().tolist())
        for code in range(8):
            v = torch.rot90(a, code % 4, dims=(-2, -1))
            v = v.flip(-1) if code >= 4 else v
            if torch.equal(v, b):
                seen.add(code)
                break
        else:
            pytest.fail("output is not a flip/rotation of the input")
    assert seen == set(range(8))
    torch.testing.assert_close(out, lat.augment(z, torch.Generator().manual_seed(0)))


def test_jittered_cache_is_keyed_apart_and_stable_per_tile(ws_vae):
    ws, vae, paths = ws_vae
    plain = np.asarray(lat.latent_cache(ws, vae, paths, 32))
    jittered = np.asarray(lat.latent_cache(ws, vae, paths, 32, jitter=0.2))
    assert len(list(ws.cache_dir.glob("latents-*.npy"))) == 2          # never served for each other
    assert not np.allclose(plain, jittered)
    # each tile keeps its own colour draw, whatever list or batch it comes in (reruns, ranks)
    again = np.asarray(lat.latent_cache(ws, vae, paths[::-1], 32, batch_size=3, jitter=0.2))
    np.testing.assert_allclose(again[::-1], jittered, rtol=1e-4, atol=1e-5)
